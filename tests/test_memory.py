import copy
import math

import pytest
import torch
from torch import nn

from traintricks.memory import (CheckpointedSequential, InPlaceABN, InPlaceABN1d, InPlaceABNFunction, ReversibleBlock,
                                ReversibleSequence, checkpoint_sequential, measure_layers, plan_checkpoints,
                                saved_bytes)
from traintricks.nn import BatchNorm2d, Dropout


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
    cfg = load_config(overrides=["data.name=digits", "epochs=2", "data.augment=[]", "eval.tta_flip=false",
                                 "batch_size=64", "lr=0.1", "schedule.name=onecycle", f"precision={PRECISION}",
                                 *overrides])
    assert build_trainer(cfg, progress=False).fit()["test_accuracy"] > 0.5
