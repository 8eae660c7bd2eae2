"""Lookahead (1907.08610): the update rule on a quadratic, side by side with pytorch_optimizer's Lookahead, the
state_dict round trip (exact resume), schedules on the wrapper, the closure path, errors, and the config."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from traintricks.config import ConfigError
from traintricks.optim import OPTIMIZER_WRAPPERS, SGD, Lookahead, Newton


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)


def _steps(model, opt, n, x, y, start=0):
    for i in range(start, start + n):
        opt.zero_grad()
        xb, yb = x[(i % 4) * 8:(i % 4 + 1) * 8], y[(i % 4) * 8:(i % 4 + 1) * 8]
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


def test_lookahead_on_a_quadratic_follows_the_rule_exactly():
    # f(x) = 0.5 * h * x^2 per coordinate; plain SGD multiplies x by (1 - lr h) per step
    h = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    lr, k, alpha = 0.1, 4, 0.3
    opt = Lookahead(torch.optim.SGD([x], lr=lr), k=k, alpha=alpha)
    slow = x.detach().clone()
    for step in range(1, 3 * k + 1):
        opt.zero_grad()
        (0.5 * h * x ** 2).sum().backward()
        opt.step()
        if step % k == 0:
            fast = slow * (1 - lr * h) ** k
            slow = slow + alpha * (fast - slow)
            torch.testing.assert_close(x.detach(), slow, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(opt.slow[x], slow, rtol=1e-12, atol=1e-14)
        else:          # between synchronizations the fast weights move as plain SGD from the slow ones
            torch.testing.assert_close(x.detach(), slow * (1 - lr * h) ** (step % k), rtol=1e-12, atol=1e-14)
    # and it converges to the minimum
    for _ in range(1500):
        opt.zero_grad()
        (0.5 * h * x ** 2).sum().backward()
        opt.step()
    assert x.detach().abs().max() < 1e-3


def test_alpha_one_is_the_inner_optimizer():
    x, y = _data()
    a, b = _model(), _model()
    _steps(a, Lookahead(SGD(a.parameters(), lr=0.1, momentum=0.9), k=3, alpha=1.0), 10, x, y)
    _steps(b, SGD(b.parameters(), lr=0.1, momentum=0.9), 10, x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


@pytest.mark.parametrize("inner", ["sgd", "adamw"])
def test_lookahead_equals_pytorch_optimizer_side_by_side(inner):
    po = pytest.importorskip("pytorch_optimizer")
    x, y = _data()
    a, b = _model(), _model()

    def make(params):
        return (torch.optim.SGD(params, lr=0.1, momentum=0.9) if inner == "sgd"
                else torch.optim.AdamW(params, lr=0.01, weight_decay=0.01))
    ours = Lookahead(make(a.parameters()), k=3, alpha=0.6)
    theirs = po.Lookahead(make(b.parameters()), k=3, alpha=0.6)
    done = 0
    for n in (2, 4, 7):                              # mid-cycle and at synchronizations
        _steps(a, ours, n, x, y, done)
        _steps(b, theirs, n, x, y, done)
        done += n
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_resumes_identically():
    x, y = _data()
    ref = _model()
    opt_ref = Lookahead(SGD(ref.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.5)
    _steps(ref, opt_ref, 13, x, y)

    a = _model()
    opt_a = Lookahead(SGD(a.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.5)
    _steps(a, opt_a, 7, x, y)                        # stopped mid-cycle (2 steps after a synchronization)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b = _model(seed=5)                               # other weights: everything comes from the checkpoint
    b.load_state_dict(saved["model"])
    opt_b = Lookahead(SGD(b.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.5)
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.steps == 7
    _steps(b, opt_b, 6, x, y, start=7)
    for p, q in zip(ref.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_param_groups_are_the_inner_optimizers_and_schedules_act_on_them():
    m = _model()
    inner = SGD([{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.5}], lr=0.1)
    opt = Lookahead(inner, k=2)
    assert opt.param_groups is inner.param_groups and opt.defaults is inner.defaults
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    _steps(m, opt, 1, x, y)
    sched.step()
    assert [g["lr"] for g in inner.param_groups] == [0.05, 0.25]
    inner.load_state_dict(inner.state_dict())       # replaces the inner list: the wrapper still sees it
    assert opt.param_groups is inner.param_groups
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra]})
    assert extra in opt.slow and len(opt.state_dict()["slow"]) == 5


def test_closure_path_reaches_the_inner_optimizer():
    w = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = Lookahead(Newton([w], lr=1.0), k=1, alpha=0.5)
    assert opt.needs_closure
    calls = []
    opt.grad_transform = lambda params: calls.append(len(params))
    v = w.detach().clone().requires_grad_()
    Newton([v], lr=1.0).step(lambda: (v ** 2).sum() * 0.5)      # (damped) Newton: to about 0 in one step
    w0 = w.detach().clone()
    opt.step(lambda: (w ** 2).sum() * 0.5)                        # Lookahead (k=1) goes half the way
    torch.testing.assert_close(w.detach(), w0 + 0.5 * (v.detach() - w0), rtol=1e-12, atol=1e-12)
    assert calls


def test_bad_arguments_are_refused():
    m = _model()
    with pytest.raises(ValueError, match="k must be"):
        Lookahead(SGD(m.parameters(), lr=0.1), k=0)
    with pytest.raises(ValueError, match="alpha must be"):
        Lookahead(SGD(m.parameters(), lr=0.1), alpha=0.0)
    with pytest.raises(ValueError, match="alpha must be"):
        Lookahead(SGD(m.parameters(), lr=0.1), alpha=1.5)
    with pytest.raises(ValueError, match="wraps a torch.optim.Optimizer"):
        Lookahead([p for p in m.parameters()])
    opt = Lookahead(SGD(m.parameters(), lr=0.1))
    other = Lookahead(SGD(_model().parameters(), lr=0.1))
    sd = other.state_dict()
    sd["slow"] = sd["slow"][:-1]
    with pytest.raises(ValueError, match="do not match"):
        opt.load_state_dict(sd)


def test_config_builds_lookahead_and_names_bad_options(tiny_cfg):
    from traintricks.training import build_trainer
    assert OPTIMIZER_WRAPPERS.defaults("lookahead") == {"k": 5, "alpha": 0.5}
    tr = build_trainer(tiny_cfg('optim.wrappers=[{name = "lookahead", k = 3, alpha = 0.8}]'), progress=False)
    assert isinstance(tr.optimizer, Lookahead) and tr.optimizer.k == 3 and tr.optimizer.alpha == 0.8
    assert isinstance(tr.optimizer.optimizer, SGD)
    assert tr.scheduler.optimizer is tr.optimizer
    with pytest.raises(ConfigError, match=r"optim.wrappers\[0\].k"):
        tiny_cfg('optim.wrappers=[{name = "lookahead", k = 1.5}]')
    with pytest.raises(ConfigError, match=r"optim.wrappers\[0\]"):
        tiny_cfg('optim.wrappers=["lookbehind"]')
    with pytest.raises(ConfigError, match=r"optim.wrappers\[0\]"):
        build_trainer(tiny_cfg('optim.wrappers=[{name = "lookahead", alpha = 2.0}]'), progress=False)


def test_a_lookahead_run_resumes_exactly(tiny_cfg, tmp_path):
    from traintricks.training import build_trainer
    cfg = tiny_cfg('optim.wrappers=[{name = "lookahead", k = 3}]', "epochs=2")
    ref = build_trainer(copy.deepcopy(cfg), progress=False)
    ref.fit()
    first = build_trainer(copy.deepcopy(cfg), progress=False, out_dir=tmp_path)
    first.epochs = 1
    first.fit()
    resumed = build_trainer(copy.deepcopy(cfg), progress=False, out_dir=tmp_path)
    resumed.resume()
    assert resumed.optimizer.steps == first.optimizer.steps > 0
    resumed.fit()
    for p, q in zip(ref.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_loading_an_inner_optimizers_state_is_refused_with_what_to_do():
    w = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.SGD([w], lr=0.1)
    la = Lookahead(torch.optim.SGD([w], lr=0.1))
    with pytest.raises(ValueError, match="not a Lookahead state"):
        la.load_state_dict(inner.state_dict())
