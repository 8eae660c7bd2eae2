"""SAM / ASAM (traintricks.optim.sam): the flat minimum, the exact perturbation, batch-norm statistics from the first
pass only, state_dict, the engine's closure path and the config, and pytorch_optimizer's SAM side by side."""
import copy

import pytest
import torch
from torch import nn

from traintricks.config import ConfigError
from traintricks.optim import OPTIMIZERS
from traintricks.optim.sam import SAM, frozen_buffers
from traintricks.training import Trainer, build_trainer

from ..conftest import PRECISION

F64 = torch.float64
K_SHARP, K_FLAT = 100.0, 1.0
FLAT = torch.tensor([1.0, 0.0], dtype=F64)


def two_minima(w):
    """min(100 |w|^2, |w - (1, 0)|^2): a sharp minimum at 0 and a flat one at (1, 0), both of depth exactly 0
    (curvatures 200 and 2)."""
    return torch.minimum(K_SHARP * (w ** 2).sum(), K_FLAT * ((w - FLAT) ** 2).sum())


def _descend(opt_kind, start, lr=0.0075, rho=0.05, steps=2000):
    w = nn.Parameter(torch.tensor(start, dtype=F64))
    if opt_kind == "sgd":
        opt = torch.optim.SGD([w], lr=lr)
    else:
        opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        if opt_kind == "sgd":
            two_minima(w).backward()
            opt.step()
        else:
            opt.step(lambda: two_minima(w))
    return w.detach()


@pytest.mark.parametrize("start", [(0.05, 0.02), (-0.05, 0.03), (0.02, -0.06)])
def test_sam_ends_in_the_flat_minimum_where_sgd_ends_in_the_sharp_one(start):
    # same start (inside the sharp basin), same rate (2 * 100 * lr = 1.5 < 2: SGD is stable at the sharp minimum)
    sgd, sam = _descend("sgd", start), _descend("sam", start)
    assert sgd.norm() < 1e-6, sgd                                   # the sharp minimum
    assert (sam - FLAT).norm() < 2e-3, sam                           # the flat one
    assert two_minima(sgd).item() < 1e-9 and two_minima(sam).item() < 1e-5     # equal depth


def _small_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = nn.Parameter(torch.randn(3, 2, generator=g, dtype=F64))
    b = nn.Parameter(torch.randn(4, generator=g, dtype=F64))
    x = torch.randn(5, 3, generator=g, dtype=F64)

    def loss():
        return ((x @ a).tanh().sum(1) ** 2).sum() + (b ** 3).sum() + (a.sum() * b.sum()).sin()
    return a, b, loss


@pytest.mark.parametrize("adaptive", [False, True])
def test_first_step_moves_the_weights_by_the_exact_perturbation(adaptive):
    a, b, loss = _small_problem()
    rho, eta = 0.3, 0.05
    opt = SAM([{"params": [a]}, {"params": [b]}], torch.optim.SGD, rho=rho, adaptive=adaptive, eta=eta, lr=0.1)
    loss().backward()
    w0 = [a.detach().clone(), b.detach().clone()]
    grads = [a.grad.clone(), b.grad.clone()]
    opt.first_step()
    if adaptive:        # ASAM: rho * T^2 g / ||T g||, T = |w| + eta
        t = [w.abs() + eta for w in w0]
        norm = torch.sqrt(sum(((ti * g) ** 2).sum() for ti, g in zip(t, grads)))
        expected = [rho * ti * ti * g / (norm + 1e-12) for ti, g in zip(t, grads)]
    else:               # SAM: rho * g / ||g||, the norm over every parameter
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        expected = [rho * g / (norm + 1e-12) for g in grads]
    for p, w, e in zip((a, b), w0, expected):
        torch.testing.assert_close(p.detach() - w, e, rtol=1e-12, atol=1e-14)
    # the second step puts the weights back exactly and steps with the gradient at w + e
    a.grad = torch.ones_like(a)
    b.grad = torch.ones_like(b)
    opt.second_step()
    torch.testing.assert_close(a.detach(), w0[0] - 0.1, rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach(), w0[1] - 0.1, rtol=0, atol=1e-15)


def test_a_step_is_the_base_step_with_the_gradient_at_the_perturbed_weights():
    a, b, loss = _small_problem(1)
    opt = SAM([a, b], torch.optim.SGD, rho=0.2, lr=0.05)
    opt.step(loss)                                    # the engine's form: no gradients, the closure returns the loss
    a1, b1 = _manual_sam_step(1, rho=0.2, lr=0.05)
    torch.testing.assert_close(a.detach(), a1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b.detach(), b1, rtol=1e-12, atol=1e-14)


def _manual_sam_step(seed, rho, lr):
    a, b, loss = _small_problem(seed)
    ga, gb = torch.autograd.grad(loss(), [a, b])
    norm = torch.sqrt((ga ** 2).sum() + (gb ** 2).sum())
    with torch.no_grad():
        a0, b0 = a.clone(), b.clone()
        a += rho * ga / (norm + 1e-12)
        b += rho * gb / (norm + 1e-12)
    ha, hb = torch.autograd.grad(loss(), [a, b])
    return a0 - lr * ha, b0 - lr * hb


def test_a_closure_that_differentiates_itself_davda54_style_gives_the_same_step():
    a, b, loss = _small_problem(1)
    opt = SAM([a, b], torch.optim.SGD, rho=0.2, lr=0.05)

    def closure():
        out = loss()
        out.backward()
        return out
    loss().backward()                                  # the first pass by the caller
    opt.step(closure)
    a1, b1 = _manual_sam_step(1, rho=0.2, lr=0.05)
    torch.testing.assert_close(a.detach(), a1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b.detach(), b1, rtol=1e-12, atol=1e-14)


def _bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _bn_state(model):
    bn = model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()


@pytest.mark.parametrize("style", ["engine", "davda54"])
def test_batchnorm_statistics_after_a_step_equal_those_after_one_plain_forward(style):
    model, plain = _bn_net(), _bn_net()
    x, y = _batch()
    plain(x)                                          # one plain forward in train mode
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, model=model)
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    if style == "engine":
        opt.step(closure)
    else:
        closure().backward()
        opt.step(lambda: closure().backward())
    for got, want in zip(_bn_state(model), _bn_state(plain)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # without model= the second pass moves them (what SAM's model= prevents)
    model2 = _bn_net()
    opt2 = SAM(model2.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    opt2.step(lambda: nn.functional.cross_entropy(model2(x), y))
    assert int(model2[1].num_batches_tracked) == 2


def test_through_the_trainer_one_step_moves_batchnorm_statistics_once_and_matches_the_manual_step():
    model, ref = _bn_net(), _bn_net()
    x, y = _batch(n=16)
    opt = OPTIMIZERS.get("sam")(model.parameters(), 0.1, rho=0.3, model=model)
    t = Trainer(model, opt, nn.functional.cross_entropy, [(x, y)], epochs=1, progress=False, precision=PRECISION,
                nan_guard=False)
    assert t.closure_path
    t.fit()
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, model=ref)
    ref_opt.step(lambda: nn.functional.cross_entropy(ref(x), y))
    assert int(model[1].num_batches_tracked) == 1
    for got, want in zip(_bn_state(model), _bn_state(ref)):
        torch.testing.assert_close(got, want)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_frozen_buffers_restores_every_buffer():
    model = _bn_net()
    before = [b.clone() for b in model.buffers()]
    with frozen_buffers(model):
        model(_batch()[0])
        assert int(model[1].num_batches_tracked) == 1
    for b, old in zip(model.buffers(), before):
        assert torch.equal(b, old)


def test_state_dict_round_trip_keeps_the_base_momentum_and_continues_identically():
    def make():
        torch.manual_seed(0)
        m = nn.Linear(4, 2)
        return m, SAM(m.parameters(), torch.optim.SGD, rho=0.1, adaptive=True, lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    m1, o1 = make()
    for _ in range(3):
        o1.zero_grad()
        o1.step(lambda: ((m1(x) - y) ** 2).mean())
    sd = copy.deepcopy(o1.state_dict())
    assert all("momentum_buffer" in s for s in sd["state"].values()) and len(sd["state"]) == 2
    assert sd["param_groups"][0]["rho"] == 0.1 and sd["param_groups"][0]["adaptive"] is True
    m2, o2 = make()
    m2.load_state_dict(m1.state_dict())
    o2.load_state_dict(sd)
    assert o2.param_groups is o2.base_optimizer.param_groups
    for m, o in ((m1, o1), (m2, o2)):
        for _ in range(2):
            o.zero_grad()
            o.step(lambda: ((m(x) - y) ** 2).mean())
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_a_schedule_on_sam_drives_the_base_rate():
    m = nn.Linear(2, 1)
    opt = SAM(m.parameters(), torch.optim.SGD, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    opt.step(lambda: m(torch.ones(1, 2)).sum())
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.05


def test_bad_inputs_are_refused():
    m = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="rho"):
        SAM(m.parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="eta"):
        SAM(m.parameters(), torch.optim.SGD, eta=-1.0, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        SAM(m.parameters(), torch.optim.SGD, lr=0.1).step()
    with pytest.raises(ValueError, match="first-order"):
        OPTIMIZERS.get("sam")(m.parameters(), 0.1, base="newton")
    with pytest.raises(ValueError, match="base"):
        OPTIMIZERS.get("sam")(m.parameters(), 0.1, base="bogus")
    with pytest.raises(TypeError, match="betas"):
        OPTIMIZERS.get("sam")(m.parameters(), 0.1, base="sgd", betas=[0.9, 0.99])
    with pytest.raises(ValueError, match="momentum"):
        OPTIMIZERS.get("sam")(m.parameters(), 0.1, momentum=1.5)        # the base's own range check
    with pytest.raises(ValueError, match="fp16"):
        Trainer(m, OPTIMIZERS.get("sam")(m.parameters(), 0.1), nn.functional.mse_loss, [], precision="fp16",
                progress=False)


def test_sam_by_name_from_the_config_trains_with_clipping(tiny_cfg):
    cfg = tiny_cfg("epochs=1", "data.limit=300", "optim.name=sam", "optim.rho=0.05", "optim.momentum=0.9",
                   "optim.nesterov=true", "optim.weight_decay=0.0005",
                   'grad_transforms=[{name = "clip_norm", max_norm = 5.0}]')
    t = build_trainer(cfg, progress=False)
    assert isinstance(t.optimizer, SAM) and t.optimizer.model is t.model
    assert t.optimizer.grad_transform is not None                  # the transforms act on the update's gradient
    assert t.optimizer.base_optimizer.param_groups[0]["nesterov"] is True
    summary = t.fit()
    assert summary["test_accuracy"] > 0.3
    with pytest.raises(ConfigError, match="optim.betas"):
        build_trainer(tiny_cfg("optim.name=sam", "optim.betas=[0.9, 0.99]"), progress=False)
    adam = build_trainer(tiny_cfg("optim.name=sam", "optim.base=adam", "optim.betas=[0.8, 0.99]",
                                  "optim.adaptive=true", "optim.rho=0.5", "schedule.name=constant"), progress=False)
    assert adam.optimizer.base_optimizer.param_groups[0]["betas"] == (0.8, 0.99)


@pytest.mark.parametrize("adaptive", [False, True])
def test_equal_to_pytorch_optimizers_sam(adaptive):
    po = pytest.importorskip("pytorch_optimizer")

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    ours_m, ref_m = make(), make()
    ours = SAM(ours_m.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, eta=0.0, lr=0.05, momentum=0.9)
    ref = po.SAM(ref_m.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.05, momentum=0.9,
                 foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 5, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g)
        for m, o in ((ours_m, ours), (ref_m, ref)):
            def closure(m=m, o=o):
                o.zero_grad()
                loss = nn.functional.cross_entropy(m(x), y)
                loss.backward()
                return loss
            closure()
            o.step(closure)
    # pytorch_optimizer takes the global gradient norm in float32 (get_global_gradient_norm), we in float64: the
    # perturbations differ by float32 rounding of the norm (~1e-9 here), nothing else
    for p, q in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
