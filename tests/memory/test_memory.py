import copy
import math

import pytest
import torch
from torch import nn

from traintricks.memory import (CheckpointedSequential, InPlaceABN, InPlaceABN1d, InPlaceABNFunction, ReversibleBlock,
                                ReversibleSequence, checkpoint_sequential, measure_layers, plan_checkpoints,
                                saved_bytes)
from traintricks.nn import Dropout


def _chain(n=8, width=16, dropout=True):
    torch.manual_seed(0)
    layers = []
    for i in range(n):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.Tanh()]
        if dropout and i % 3 == 1:
            layers.append(Dropout(0.3))
    return nn.Sequential(*layers).double()


def _grads_and_stats(model, run, x):
    torch.manual_seed(123)
    xi = x.clone().requires_grad_()
    out = run(model, xi)
    out.pow(2).sum().backward()
    return out.detach(), xi.grad, [p.grad.clone() for p in model.parameters()], \
        [b.clone() for b in model.buffers()]


@pytest.mark.parametrize("run", [
    lambda m, x: checkpoint_sequential(m, 3, x),
    lambda m, x: checkpoint_sequential(list(m), 1, x),
    lambda m, x: checkpoint_sequential(m, len(m), x),
])
def test_checkpointed_gradients_equal_plain_with_dropout_and_batchnorm(run):
    x = torch.randn(12, 16, dtype=torch.float64)
    plain = _chain()
    ck = copy.deepcopy(plain)
    ref = _grads_and_stats(plain, lambda m, x: m(x), x)
    got = _grads_and_stats(ck, run, x)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)      # same dropout masks
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(got[3], ref[3]):                                         # running stats updated once
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int([b for b in ck.buffers()][2]) == 1                            # num_batches_tracked


def test_checkpointing_saves_memory():
    model = _chain(12, 64, dropout=False)
    x = torch.randn(256, 64, dtype=torch.float64)
    plain = saved_bytes(lambda: model(x.requires_grad_()), exclude=model)
    ck = saved_bytes(lambda: checkpoint_sequential(model, 4, x.requires_grad_()), exclude=model)
    assert ck < 0.45 * plain


def test_planner_sqrt_n_budget_for_equal_layers():
    n = 16
    model = nn.Sequential(*[nn.Tanh() for _ in range(n)]).double()     # each saves exactly its output
    x = torch.randn(128, 256, dtype=torch.float64)
    act = x.numel() * 8
    costs = measure_layers(list(model), x)
    assert all(c.saved_bytes == act and c.output_bytes == act for c in costs)
    for c in costs:
        c.seconds = 1.0                                                # equal layers: deterministic costs
    budget = int(2 * math.sqrt(n)) * act
    plan = plan_checkpoints(model, x, budget, costs)
    assert plan.predicted_bytes <= budget
    assert plan.predicted_recompute_seconds <= n * 1.0                  # at most one extra forward
    assert any(r for _, _, r in plan.segments) and "predicted" in plan.describe()
    ck = CheckpointedSequential(*model, plan=plan)
    xi = x.clone().requires_grad_()
    kept = saved_bytes(lambda: ck(xi))
    assert kept <= budget
    ck(xi).sum().backward()
    xj = x.clone().requires_grad_()
    model(xj).sum().backward()
    torch.testing.assert_close(xi.grad, xj.grad)
    # a generous budget stores everything: no recomputation
    full = plan_checkpoints(model, x, n * act, costs)
    assert full.predicted_recompute_seconds == 0 and full.kept_layers == list(range(n))
    # more memory never means more recomputation
    rc = [plan_checkpoints(model, x, b * act, costs).predicted_recompute_seconds for b in (8, 10, 12, 16)]
    assert rc == sorted(rc, reverse=True)


def test_planner_impossible_budget_names_the_minimum():
    model = nn.Sequential(*[nn.Tanh() for _ in range(9)]).double()
    x = torch.randn(10, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"least feasible budget for this model and input is (\d+) bytes"):
        plan_checkpoints(model, x, 100)
    try:
        plan_checkpoints(model, x, 100)
    except ValueError as e:
        minimum = int(str(e).split("input is ")[1].split(" bytes")[0])
    plan_checkpoints(model, x, minimum)                                 # the named minimum is feasible


def test_checkpointed_sequential_from_a_budget():
    model = _chain(6, 32, dropout=False)
    x = torch.randn(64, 32, dtype=torch.float64)
    full = sum(c.saved_bytes for c in measure_layers(list(model), x))
    ck = CheckpointedSequential(*copy.deepcopy(model), budget_bytes=full // 2, example_input=x)
    assert ck.plan.predicted_bytes <= full // 2
    ref = _grads_and_stats(model, lambda m, x: m(x), x)
    got = _grads_and_stats(ck, lambda m, x: m(x), x)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(got[3], ref[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- In-Place ABN
@pytest.mark.parametrize("slope", [0.01, 0.3])
def test_inplace_abn_gradcheck_and_equals_bn_leaky_relu(slope):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: InPlaceABNFunction.apply(a, c, d, 1e-5, slope, 1e-5)[0], (x, g, b))
    abn = InPlaceABN(5, activation_param=slope, alpha=0.9).double()
    ref = nn.Sequential(nn.BatchNorm2d(5, momentum=0.1), nn.LeakyReLU(slope)).double()
    with torch.no_grad():
        abn.weight.copy_(torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.0]))   # negative gamma is invertible too
        ref[0].weight.copy_(abn.weight)
    xa = (torch.randn(8, 5, 3, 3, dtype=torch.float64) * 2).requires_grad_()
    xb = xa.detach().clone().requires_grad_()
    ya, yb = abn(xa), ref(xb)
    torch.testing.assert_close(ya, yb)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(abn.weight.grad, ref[0].weight.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(abn.running_var, ref[0].running_var)
    abn.eval(), ref.eval()
    torch.testing.assert_close(abn(xa.detach()), ref(xa.detach()))


def test_inplace_abn_saves_half_the_memory_and_handles_small_gamma():
    x = torch.randn(16, 32, 8, 8)
    abn = InPlaceABN(32)
    pair = nn.Sequential(nn.BatchNorm2d(32), nn.LeakyReLU(0.01))
    ours = saved_bytes(lambda: abn(x.clone().requires_grad_()), exclude=abn)
    ref = saved_bytes(lambda: pair(x.clone().requires_grad_()), exclude=pair)
    assert ours <= 0.55 * ref
    with torch.no_grad():
        abn.weight.zero_()                                   # gamma = 0: clamped to eps_gamma, gradient finite
    xg = x.clone().requires_grad_()
    abn(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(abn.weight.grad).all()
    with pytest.raises(ValueError, match="slope must be > 0"):
        InPlaceABN(4, activation_param=0.0)
    assert InPlaceABN1d(4)(torch.randn(5, 4)).shape == (5, 4)


# ---------------------------------------------------------------- reversible
def _rev(n=4, c=4, dropout=False):
    torch.manual_seed(0)

    def branch():
        layers = [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Tanh()]
        if dropout:
            layers.append(Dropout(0.2))
        return nn.Sequential(*layers)
    return [ReversibleBlock(branch(), branch()) for _ in range(n)]


@pytest.mark.parametrize("dropout", [False, True])
def test_reversible_sequence_gradients_equal_plain_and_stats_update_once(dropout):
    blocks = _rev(dropout=dropout)
    plain = nn.Sequential(*copy.deepcopy(blocks)).double()
    rev = ReversibleSequence(copy.deepcopy(blocks)).double()
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    ref = _grads_and_stats(plain, lambda m, x: m(x), x)
    got = _grads_and_stats(rev, lambda m, x: m(x), x)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-8, atol=1e-10)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for a, b in zip(got[3], ref[3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_reversible_inverse_and_constant_memory_in_depth():
    b = _rev(1)[0].double().eval()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(b.inverse(b(x)), x, rtol=1e-12, atol=1e-12)
    x = torch.randn(4, 8, 8, 8)
    small = ReversibleSequence(_rev(2))
    deep = ReversibleSequence(_rev(8))
    s1 = saved_bytes(lambda: small(x.clone().requires_grad_()), exclude=small)
    s4 = saved_bytes(lambda: deep(x.clone().requires_grad_()), exclude=deep)
    assert s4 <= 1.1 * s1
    with pytest.raises(ValueError, match="even"):
        deep(torch.randn(1, 7, 4, 4))


@pytest.mark.parametrize("overrides", [
    ["model.name=revnet", "model.widths=[8, 16]", "model.blocks=[2, 1]"],
    ["model.name=preact_resnet", "model.norm=inplace_abn", "model.activation=leaky_relu", "model.widths=[4, 8]",
     "model.blocks=[1, 1]", "model.stem_width=8", "lr=0.2"],      # at lr 0.1: 0.507 in bf16, 0.526 in fp32
    ["model.name=revnet", "model.norm=inplace_abn", "model.activation=leaky_relu", "model.widths=[8, 16]",
     "model.blocks=[1, 1]"],
])
def test_memory_saving_models_train_by_name(overrides):
    from tests.conftest import PRECISION
    from traintricks.config import load_config
    from traintricks.training import build_trainer
    cfg = load_config(overrides=["data.name=digits", "epochs=2", "data.augment=[]", "callbacks=[]",
                                 "batch_size=64", "lr=0.1", "schedule.name=onecycle", f"precision={PRECISION}",
                                 *overrides])
    assert build_trainer(cfg, progress=False).fit()["test_accuracy"] > 0.5


# ---------------------------------------------------------------- re-runs see the forward's state (issue 15, item 7)
from traintricks.memory import CheckpointPlan, ForwardState  # noqa: E402
from traintricks.nn import BatchNorm1d, BatchRenorm1d, BatchRenorm2d  # noqa: E402


def _renorm(c, **kw):
    """Batch renorm with its limits in force from the first step (no warm-up), or a given ramp."""
    opts = dict(momentum=0.5, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0)
    opts.update(kw)
    return BatchRenorm1d(c, **opts)


def test_checkpoint_recomputation_sees_the_forwards_renorm_statistics():
    """Issue 15 item 7: the recomputation read the running statistics after this batch's update (dgamma 2.261)."""
    def run(checkpointed):
        model = nn.Sequential(_renorm(1), nn.Identity()).double()
        x = torch.tensor([[0.0], [3.0]], dtype=torch.float64, requires_grad=True)
        y = checkpoint_sequential(model, 2, x) if checkpointed else model(x)
        (y * torch.tensor([[1.0], [2.0]], dtype=torch.float64)).sum().backward()
        return model[0].weight.grad, model[0].bias.grad, x.grad, [b.clone() for b in model.buffers()]
    ref, got = run(False), run(True)
    six = torch.tensor([6.0], dtype=torch.float64)                    # 6.0 up to eps = 1e-5 in sqrt(var + eps)
    torch.testing.assert_close(ref[0], six, rtol=1e-5, atol=0)
    torch.testing.assert_close(got[0], six, rtol=1e-5, atol=0)
    for a, b in zip(got[:3], ref[:3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(got[3], ref[3]):
        assert torch.equal(a, b)                                      # updated once


STATEFUL = {
    "renorm": lambda c: _renorm(c),
    "renorm_ramp": lambda c: _renorm(c, rmax=1.5, dmax=0.5, warmup_steps=1, r_ramp_steps=2, d_ramp_steps=3),
    "torch_bn_cumulative": lambda c: nn.BatchNorm1d(c, momentum=None),
    "torch_bn": lambda c: nn.BatchNorm1d(c, momentum=0.1),
    "ours_bn": lambda c: BatchNorm1d(c, momentum=0.1),
    "dropout": lambda c: Dropout(0.4),
    "torch_dropout": lambda c: nn.Dropout(0.4),
}


def _stateful_chain(kind, width=4):
    torch.manual_seed(0)
    make = STATEFUL[kind]
    return nn.Sequential(nn.Linear(width, width), make(width), nn.Tanh(), nn.Linear(width, width), make(width),
                         nn.Identity()).double()


def _train_steps(model, run, steps=4, seed=0):
    """Plain SGD steps on fixed batches; per step the output, input and parameter gradients, and the buffers."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = []
    torch.manual_seed(7)
    for _ in range(steps):
        x = (torch.randn(6, 4, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_()
        w = torch.randn(6, 4, generator=g, dtype=torch.float64)
        opt.zero_grad()
        out = run(model, x)
        (out * w).sum().backward()
        trace.append((out.detach(), x.grad, [p.grad.clone() for p in model.parameters()],
                      [b.clone() for b in model.buffers()]))
        opt.step()
    trace.append(torch.rand(3))                                       # the RNG stream continues as in plain
    return trace


def _assert_same_training(got, ref):
    for (o, gx, gp, bufs), (o2, gx2, gp2, bufs2) in zip(got[:-1], ref[:-1]):
        torch.testing.assert_close(o, o2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx, gx2, rtol=1e-10, atol=1e-12)
        for a, b in zip(gp, gp2):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for a, b in zip(bufs, bufs2):                                 # buffers as after one plain forward
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert torch.equal(got[-1], ref[-1])


RUNNERS = {
    "checkpoint_sequential_2": lambda m, x: checkpoint_sequential(m, 2, x),
    "checkpoint_sequential_each": lambda m, x: checkpoint_sequential(m, len(m), x),
    "planned": None,                                                  # CheckpointedSequential, built below
}


@pytest.mark.parametrize("runner", list(RUNNERS))
@pytest.mark.parametrize("kind", list(STATEFUL))
def test_recomputation_equals_plain_autograd_for_stateful_layers(kind, runner):
    plain = _stateful_chain(kind)
    if runner == "planned":
        plan = CheckpointPlan([(0, 2, True), (2, 5, True), (5, 6, False)], 0, 0.0, 0)
        model = CheckpointedSequential(*copy.deepcopy(list(plain)), plan=plan)
        run = lambda m, x: m(x)                                       # noqa: E731
    else:
        model, run = copy.deepcopy(plain), RUNNERS[runner]
    ref = _train_steps(plain, lambda m, x: m(x))
    got = _train_steps(model, run)
    _assert_same_training(got, ref)


def test_planner_built_from_a_budget_recomputes_renorm_exactly():
    plain = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(4, 4), _renorm(4), nn.Tanh())]).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    before = [b.clone() for b in plain.buffers()]
    rng = torch.get_rng_state()
    costs = measure_layers(list(plain), x)
    assert all(torch.equal(a, b) for a, b in zip(plain.buffers(), before))     # measuring changes no state
    assert torch.equal(torch.get_rng_state(), rng)
    minimum = sum(c.saved_bytes for c in costs) // 3
    model = CheckpointedSequential(*copy.deepcopy(list(plain)), budget_bytes=minimum * 2, example_input=x)
    assert any(r for _, _, r in model.plan.segments)
    _assert_same_training(_train_steps(model, lambda m, x: m(x)), _train_steps(plain, lambda m, x: m(x)))


def test_recomputation_replays_flags_counters_and_module_generators():
    class Counting(nn.Module):
        """Output depends on a Python counter, the training flag and a generator the module holds."""

        def __init__(self):
            super().__init__()
            self.calls, self.gen = 0, torch.Generator().manual_seed(3)

        def forward(self, x):
            self.calls += 1
            noise = torch.rand(x.shape, generator=self.gen, dtype=x.dtype)
            return x * (self.calls + noise) * (2.0 if self.training else 1.0)

    def run(checkpointed):
        model = nn.Sequential(Counting(), nn.Identity())
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        y = checkpoint_sequential(model, 2, x) if checkpointed else model(x)
        model.eval()                                                   # flipped between forward and backward
        y.sum().backward()
        return x.grad, model[0].calls, model[0].gen.get_state(), model[0].training
    ref, got = run(False), run(True)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    assert got[1] == ref[1] == 1 and torch.equal(got[2], ref[2]) and got[3] is ref[3] is False


def test_forward_state_replay_runs_on_copies_and_rollback_undoes():
    bn = nn.BatchNorm1d(2)
    state = ForwardState(bn)
    x = torch.randn(5, 2)
    y1 = bn(x)
    after = [b.clone() for b in bn.buffers()]
    with state.replay():
        assert int(bn.num_batches_tracked) == 0
        bn.eval()
        y2 = bn(x)                                                     # eval: identity-ish with fresh stats
    assert bn.training and all(torch.equal(a, b) for a, b in zip(bn.buffers(), after))
    torch.testing.assert_close(y2, x / (1 + 1e-5) ** 0.5)
    with state.replay():
        torch.testing.assert_close(bn(x), y1, rtol=0, atol=0)          # the same forward, twice
    state.rollback()
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros(2))


def _stateful_rev_blocks(n=3, c=2):
    torch.manual_seed(0)

    def f():
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), BatchRenorm2d(c, momentum=0.5, warmup_steps=1,
                             r_ramp_steps=2, d_ramp_steps=2, rmax=1.5, dmax=0.5), nn.Tanh())

    def g():
        return nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c, momentum=None), nn.Tanh(), Dropout(0.3))
    return [ReversibleBlock(f(), g()) for _ in range(n)]


def test_reversible_reconstruction_sees_the_forwards_state():
    blocks = _stateful_rev_blocks()
    plain = nn.Sequential(*copy.deepcopy(blocks)).double()
    rev = ReversibleSequence(copy.deepcopy(blocks)).double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64) * 2 + 1 for _ in range(4)]

    def run(model, x):
        return model(x)

    def steps(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        torch.manual_seed(5)
        out = []
        for x in xs:
            opt.zero_grad()
            xi = x.clone().requires_grad_()
            y = run(model, xi)
            y.pow(2).sum().backward()
            out.append((y.detach(), xi.grad, [p.grad.clone() for p in model.parameters()],
                        [b.clone() for b in model.buffers()]))
            opt.step()
        out.append(torch.rand(3))
        return out
    got, ref = steps(rev), steps(plain)
    for (o, gx, gp, bufs), (o2, gx2, gp2, bufs2) in zip(got[:-1], ref[:-1]):
        torch.testing.assert_close(o, o2, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gx, gx2, rtol=1e-8, atol=1e-10)
        for a, b in zip(gp, gp2):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        for a, b in zip(bufs, bufs2):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(got[-1], ref[-1])


def test_reversible_inverse_without_states_changes_no_state():
    b = _stateful_rev_blocks(1)[0].double()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y, states = b.forward_recording(x)
    after = [t.clone() for t in b.buffers()]
    torch.testing.assert_close(b.inverse(y, states), x, rtol=1e-10, atol=1e-10)
    b.inverse(y)                                                       # current state: not exact, but no side effect
    assert all(torch.equal(a, t) for a, t in zip(after, b.buffers()))


@pytest.mark.parametrize("kw", [dict(use_reentrant=False), dict(use_reentrant=True), dict(use_reentrant=None),
                                dict(use_reentrant=False, preserve_rng_state=True),
                                dict(use_reentrant=False, preserve_rng_state=False)])
def test_regression_issue15_checkpoint_sequential_takes_torchs_use_reentrant(kw):
    """Remaining fault 6: checkpoint_sequential(..., use_reentrant=False) raised TypeError. PyTorch's keywords are
    accepted; every value gives the plain (and PyTorch's) gradients, masks and running statistics."""
    import torch.utils.checkpoint as tuc
    x = torch.randn(12, 16, dtype=torch.float64)
    plain = _chain()
    ours, theirs = copy.deepcopy(plain), copy.deepcopy(plain)
    ref = _grads_and_stats(plain, lambda m, x: m(x), x)
    got = _grads_and_stats(ours, lambda m, x: checkpoint_sequential(m, 3, x, **kw), x)
    torch_kw = dict(kw, use_reentrant=kw["use_reentrant"] if kw["use_reentrant"] is not None else False)
    if torch_kw.get("preserve_rng_state") is False:
        torch_kw.pop("preserve_rng_state")              # torch's masks then differ from the forward's: not comparable
    tor = _grads_and_stats(theirs, lambda m, x: tuc.checkpoint_sequential(m, 3, x, **torch_kw), x)
    for i, (a, b, c) in enumerate(zip(got, ref, tor)):
        for u, v, w in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b],
                           c if isinstance(c, list) else [c]):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
            if i < 3:          # buffers: torch's recomputation updates the running statistics a second time
                torch.testing.assert_close(u, w, rtol=1e-10, atol=1e-12)


def test_checkpoint_sequential_parameter_gradients_without_input_grad_and_with_autograd_grad():
    # what use_reentrant=False promises in PyTorch: parameters get gradients when the input needs none, and
    # torch.autograd.grad works
    model = _chain(4, 8, dropout=False)
    x = torch.randn(6, 8, dtype=torch.float64)
    params = list(model.parameters())
    ck = copy.deepcopy(model)
    ref = torch.autograd.grad(model(x).sum(), params)
    got = torch.autograd.grad(checkpoint_sequential(ck, 2, x, use_reentrant=False).sum(), list(ck.parameters()))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_checkpoint_sequential_refuses_unknown_keywords_and_non_bool_flags():
    model = _chain(2, 4, dropout=False)
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="Unexpected keyword arguments: context_fn"):
        checkpoint_sequential(model, 2, x, use_reentrant=False, context_fn=None)
    with pytest.raises(TypeError, match="use_reentrant"):
        checkpoint_sequential(model, 2, x, use_reentrant="no")
    with pytest.raises(TypeError, match="preserve_rng_state"):
        checkpoint_sequential(model, 2, x, preserve_rng_state=None)
