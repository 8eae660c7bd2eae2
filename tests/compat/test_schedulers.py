"""Compatibility suite, schedules: the scheduler cases of PyTorch's ``test/optim/test_lrscheduler.py``, re-expressed,
run side by side with our classes -- alone, two stepped together, in ``ChainedScheduler`` and ``SequentialLR``,
``step(epoch)`` (closed form), ``state_dict`` both ways, and the same errors.

Ours with a torch twin of the same name (``StepLR``, ``ExponentialLR``, ``ConstantLR``) and ``Cyclic``
(``CyclicLR``) must match in every respect; the closed-form owners with a differently named twin
(``CosineRestarts`` / ``CosineAnnealingWarmRestarts``, ``OneCycle`` / ``OneCycleLR``, ``Warmup`` / ``LinearLR``)
must give the same rates on the same settings (docs/compatibility.md lists what differs and why).
"""
import copy
import pickle
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as tl

from traintricks.optim import ConstantLR, CosineRestarts, Cyclic, ExponentialLR, OneCycle, StepLR, Warmup

EPOCHS = 12


def make_opt(tensor_lr: bool = True, momentum: float = 0.0):
    """PyTorch's test setup: two groups, the second with its own (tensor) rate."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1)).double()
    lr2 = torch.tensor(0.5, dtype=torch.float64) if tensor_lr else 0.5
    return torch.optim.SGD([{"params": net[0].parameters()}, {"params": net[1].parameters(), "lr": lr2}],
                           lr=0.05, momentum=momentum)


def lrs(opt):
    return [float(g["lr"]) for g in opt.param_groups]


def trajectory(opt, step, n=EPOCHS):
    out = [lrs(opt)]
    for _ in range(n):
        opt.step()
        step()
        out.append(lrs(opt))
    return out


def close(a, b):
    torch.testing.assert_close(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                               rtol=1e-10, atol=1e-14)


# (id, ours, torch's): the same-named classes, as the cases of test_lrscheduler.py set them
SAME = [
    ("step_lr", lambda o: StepLR(o, step_size=3, gamma=0.1), lambda o: tl.StepLR(o, step_size=3, gamma=0.1)),
    ("step_lr_gamma1", lambda o: StepLR(o, 2, gamma=1.0), lambda o: tl.StepLR(o, 2, gamma=1.0)),
    ("exponential_lr", lambda o: ExponentialLR(o, gamma=0.9), lambda o: tl.ExponentialLR(o, gamma=0.9)),
    ("constantlr", lambda o: ConstantLR(o, factor=1.0 / 2, total_iters=5),
     lambda o: tl.ConstantLR(o, factor=1.0 / 2, total_iters=5)),
    ("constantlr_defaults", lambda o: ConstantLR(o), lambda o: tl.ConstantLR(o)),
    ("cyclic_triangular", lambda o: Cyclic(o, 0.01, 0.1, 2, cycle_momentum=False),
     lambda o: tl.CyclicLR(o, 0.01, 0.1, 2, cycle_momentum=False)),
    ("cyclic_triangular2", lambda o: Cyclic(o, [0.01, 0.02], [0.1, 0.5], 3, 2, mode="triangular2",
                                            cycle_momentum=False),
     lambda o: tl.CyclicLR(o, [0.01, 0.02], [0.1, 0.5], 3, 2, mode="triangular2", cycle_momentum=False)),
    ("cyclic_exp_range", lambda o: Cyclic(o, 0.01, 0.1, 2, mode="exp_range", gamma=0.9, cycle_momentum=False),
     lambda o: tl.CyclicLR(o, 0.01, 0.1, 2, mode="exp_range", gamma=0.9, cycle_momentum=False)),
]
CHAINABLE = [c for c in SAME if not c[0].startswith("cyclic")]

# (id, ours, torch's twin): same rates on the same settings
TWINS = [
    ("warm_restarts_T_mult1", lambda o: CosineRestarts(o, T_0=3, eta_min=0.001),
     lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=3, eta_min=0.001)),
    ("warm_restarts_T_mult2", lambda o: CosineRestarts(o, T_0=2, T_mult=2, eta_min=0.0),
     lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=0.0)),
    ("onecycle_cos", lambda o: OneCycle(o, [0.1, 1.0], EPOCHS + 1, pct_start=0.3, anneal="cos", div_factor=25.0,
                                        final_div_factor=1e4, cycle_momentum=False),
     lambda o: tl.OneCycleLR(o, [0.1, 1.0], EPOCHS + 1, pct_start=0.3, anneal_strategy="cos", cycle_momentum=False)),
    ("onecycle_linear_three_phase", lambda o: OneCycle(o, 0.1, EPOCHS + 1, three_phase=True, cycle_momentum=False),
     lambda o: tl.OneCycleLR(o, 0.1, EPOCHS + 1, pct_start=0.25, anneal_strategy="linear", div_factor=10.0,
                             final_div_factor=100.0, three_phase=True, cycle_momentum=False)),
    ("linearlr", lambda o: Warmup(o, 4, start_factor=0.25), lambda o: tl.LinearLR(o, 0.25, 1.0, 4)),
]


@pytest.mark.parametrize("case", SAME + TWINS, ids=lambda c: c[0])
def test_alone(case):
    _, ours, theirs = case
    tensor = not case[0].startswith(("onecycle", "warm"))
    a, b = make_opt(tensor), make_opt(tensor)
    sa, sb = ours(a), theirs(b)
    close(trajectory(a, sa.step), trajectory(b, sb.step))
    close(sa.get_last_lr(), sb.get_last_lr())


@pytest.mark.parametrize("case", CHAINABLE + TWINS[-1:], ids=lambda c: c[0])
@pytest.mark.parametrize("how", ["together", "chained", "chained_reversed"])
def test_composed_with_torch_schedulers(case, how):
    """test_compound_*: two chainable schedulers stepped together or in ChainedScheduler multiply their factors."""
    _, ours, theirs = case

    def run(make, step_cls):
        o = make_opt()
        s, other = make(o), step_cls(o)
        if how == "together":
            return trajectory(o, lambda: (s.step(), other.step()))
        ch = tl.ChainedScheduler([s, other] if how == "chained" else [other, s])
        return trajectory(o, ch.step)

    mixed = run(ours, lambda o: tl.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.1))
    close(mixed, run(theirs, lambda o: tl.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.1)))
    close(run(ours, lambda o: tl.ConstantLR(o, factor=0.1, total_iters=4)),
          run(theirs, lambda o: tl.ConstantLR(o, factor=0.1, total_iters=4)))


@pytest.mark.parametrize("other", [lambda o: tl.MultiStepLR(o, milestones=[1, 5, 9], gamma=0.1),
                                   lambda o: tl.ExponentialLR(o, gamma=0.9),
                                   lambda o: tl.ConstantLR(o, factor=0.1, total_iters=2)],
                         ids=["multistep", "exponential", "constantlr"])
@pytest.mark.parametrize("how", ["together", "together_reversed", "chained", "chained_reversed"])
def test_warmup_from_zero_composed_with_torch_schedulers(other, how):
    """``Warmup(opt, 4)`` (start_factor 0, which LinearLR refuses) beside a torch scheduler, either order, by hand
    or in ChainedScheduler, float and tensor rates: the torch scheduler's own rates times ``min(1, t / 4)``."""
    o = make_opt()
    if how.endswith("reversed"):                          # constructed and stepped in this order
        first = Warmup(o, 4)
        second = other(o)
    else:
        first = other(o)
        second = Warmup(o, 4)
    if how.startswith("together"):
        got = trajectory(o, lambda: (first.step(), second.step()))
    else:
        got = trajectory(o, tl.ChainedScheduler([first, second]).step)
    r = make_opt()
    want = [[lr * min(1.0, t / 4) for lr in row] for t, row in enumerate(trajectory(r, other(r).step))]
    close(got, want)


@pytest.mark.parametrize("case", SAME + TWINS, ids=lambda c: c[0])
@pytest.mark.parametrize("position", ["first", "second"])
def test_in_sequential_lr(case, position):
    _, ours, theirs = case
    tensor = not case[0].startswith(("onecycle", "warm"))

    def run(make):
        o = make_opt(tensor)
        other = tl.ExponentialLR(o, gamma=0.9)
        s = make(o)
        seq = tl.SequentialLR(o, [s, other] if position == "first" else [other, s], milestones=[5])
        return trajectory(o, seq.step)

    close(run(ours), run(theirs))


@pytest.mark.parametrize("case", CHAINABLE + TWINS, ids=lambda c: c[0])
def test_step_with_epoch_uses_the_closed_form(case):
    """_test_with_epoch / *_is_constant_for_constant_epoch: step(epoch) gives the closed form at that epoch."""
    _, ours, theirs = case
    tensor = not case[0].startswith(("onecycle", "warm"))
    a, b = make_opt(tensor), make_opt(tensor)
    sa, sb = ours(a), theirs(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in (1, 2, 2, 2, 5, 3, 7, 9, 9):
            a.step(), b.step()
            sa.step(epoch), sb.step(epoch)
            close(lrs(a), lrs(b))


FRACTIONAL = [c for c in SAME + TWINS if c[0].startswith(("cyclic", "warm", "onecycle", "linearlr"))] + [
    ("warm_restarts_T_mult3", lambda o: CosineRestarts(o, T_0=2, T_mult=3, eta_min=0.01),
     lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=3, eta_min=0.01)),
    ("cyclic_momentum", lambda o: Cyclic(o, [0.01, 0.02], [0.1, 0.5], 3, 2, mode="exp_range", gamma=0.9),
     lambda o: tl.CyclicLR(o, [0.01, 0.02], [0.1, 0.5], 3, 2, mode="exp_range", gamma=0.9)),
    ("onecycle_momentum", lambda o: OneCycle(o, 0.1, EPOCHS + 1, pct_start=0.3, anneal="cos", div_factor=25.0,
                                             final_div_factor=1e4),
     lambda o: tl.OneCycleLR(o, 0.1, EPOCHS + 1)),
]


@pytest.mark.parametrize("case", FRACTIONAL, ids=lambda c: c[0])
def test_step_with_a_fractional_epoch(case):
    """``step(epoch + i / iters)`` (CosineAnnealingWarmRestarts' documented use; OneCycleLR / CyclicLR / LinearLR
    take a fraction too): the same rates and momentum at the fraction and at the plain steps after it."""
    name, ours, theirs = case
    tensor = not name.startswith(("onecycle", "warm"))
    a, b = make_opt(tensor, momentum=0.9), make_opt(tensor, momentum=0.9)
    sa, sb = ours(a), theirs(b)
    # LinearLR's chainable step() past its end after a fractional epoch keeps the fractional factor forever
    # (docs/compatibility.md): compare it inside the warm-up only
    epochs, after = ((0.5, 2.25, 1.75, 0.25), 1) if name == "linearlr" else ((0.5, 2.25, 7.75, 9.9, 3.5, 0.4), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # torch's step(epoch) deprecation warning
        for epoch in epochs:
            a.step(), b.step()
            sa.step(epoch), sb.step(epoch)
            for _ in range(after + 1):
                close(lrs(a), lrs(b))
                close([g["momentum"] for g in a.param_groups], [g["momentum"] for g in b.param_groups])
                a.step(), b.step()
                sa.step(), sb.step()


@pytest.mark.parametrize("case", SAME, ids=lambda c: c[0])
@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
def test_state_dict_both_ways(case, direction):
    """_check_scheduler_state_dict: a scheduler loading another's state continues exactly as it would have."""
    _, ours, theirs = case
    src_make, dst_make = (ours, theirs) if direction == "ours_to_torch" else (theirs, ours)
    a = make_opt()
    src = src_make(a)
    trajectory(a, src.step, 7)
    state = copy.deepcopy(src.state_dict())
    keys = set(state)
    b = make_opt()
    b.load_state_dict(a.state_dict())
    dst = dst_make(b)
    dst.load_state_dict(state)
    for g, h in zip(a.param_groups, b.param_groups):
        g["lr"] = h["lr"] = copy.deepcopy(g["lr"])
    b.load_state_dict(a.state_dict())
    assert set(dst.state_dict()) == keys
    close(trajectory(a, src.step), trajectory(b, dst.step))
    pickle.dumps(dst.state_dict())                       # test_*_pickle


RESUME = [
    ("step_lr", lambda o, e: StepLR(o, 3, last_epoch=e), lambda o, e: tl.StepLR(o, 3, last_epoch=e)),
    ("exponential_lr", lambda o, e: ExponentialLR(o, 0.9, last_epoch=e),
     lambda o, e: tl.ExponentialLR(o, 0.9, last_epoch=e)),
    ("constantlr", lambda o, e: ConstantLR(o, last_epoch=e), lambda o, e: tl.ConstantLR(o, last_epoch=e)),
    ("warm_restarts", lambda o, e: CosineRestarts(o, 3, last_epoch=e),
     lambda o, e: tl.CosineAnnealingWarmRestarts(o, 3, last_epoch=e)),
    ("linearlr", lambda o, e: Warmup(o, 3, start_factor=0.5, last_epoch=e),
     lambda o, e: tl.LinearLR(o, 0.5, last_epoch=e)),
]


@pytest.mark.parametrize("case", RESUME, ids=lambda c: c[0])
def test_resuming_without_initial_lr_raises_torchs_keyerror(case):
    """test_raise_error_when_last_epoch_is_greater_than_0_and_initial_lr_is_not_specified, and resuming with it."""
    _, ours, theirs = case
    for make in (ours, theirs):
        with pytest.raises(KeyError, match="initial_lr"):
            make(torch.optim.SGD([torch.nn.Parameter(torch.randn(2, 2))], lr=0.1), 1)
    a, b = make_opt(False), make_opt(False)
    for o in (a, b):
        for g in o.param_groups:
            g["initial_lr"] = g["lr"]
    close(trajectory(a, ours(a, 4).step), trajectory(b, theirs(b, 4).step))


ERRORS = [
    ("constantlr_factor_above_1", lambda o: ConstantLR(o, factor=1.5), lambda o: tl.ConstantLR(o, factor=1.5)),
    ("constantlr_factor_below_0", lambda o: ConstantLR(o, factor=-0.1), lambda o: tl.ConstantLR(o, factor=-0.1)),
    ("warm_restarts_T_0", lambda o: CosineRestarts(o, 0), lambda o: tl.CosineAnnealingWarmRestarts(o, 0)),
    ("warm_restarts_T_0_float", lambda o: CosineRestarts(o, 2.5), lambda o: tl.CosineAnnealingWarmRestarts(o, 2.5)),
    ("warm_restarts_T_mult", lambda o: CosineRestarts(o, 2, 0), lambda o: tl.CosineAnnealingWarmRestarts(o, 2, 0)),
    ("warm_restarts_eta_min", lambda o: CosineRestarts(o, 2, eta_min="x"),
     lambda o: tl.CosineAnnealingWarmRestarts(o, 2, eta_min="x")),
    ("cyclic_mode", lambda o: Cyclic(o, 0.01, 0.1, mode="bogus"), lambda o: tl.CyclicLR(o, 0.01, 0.1, mode="bogus")),
    ("cyclic_list_length", lambda o: Cyclic(o, [0.01], 0.1), lambda o: tl.CyclicLR(o, [0.01], 0.1)),
    ("cyclic_momentum_without_momentum",
     lambda o: Cyclic(torch.optim.Rprop(o.param_groups[0]["params"]), 0.01, 0.1),
     lambda o: tl.CyclicLR(torch.optim.Rprop(o.param_groups[0]["params"]), 0.01, 0.1)),
    ("onecycle_momentum_without_momentum",
     lambda o: OneCycle(torch.optim.Rprop(o.param_groups[0]["params"]), 0.1, 10),
     lambda o: tl.OneCycleLR(torch.optim.Rprop(o.param_groups[0]["params"]), 0.1, 10)),
    ("onecycle_max_lr_list_length", lambda o: OneCycle(o, [0.1], 10), lambda o: tl.OneCycleLR(o, [0.1], 10)),
    ("not_an_optimizer", lambda o: StepLR(object(), 2), lambda o: tl.StepLR(object(), 2)),
]


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c[0])
def test_same_errors(case):
    _, ours, theirs = case
    with pytest.raises(Exception) as theirs_err:
        theirs(make_opt(False, momentum=0.9))
    with pytest.raises(type(theirs_err.value)) as ours_err:
        ours(make_opt(False, momentum=0.9))
    if case[0].startswith(("constantlr", "warm", "cyclic", "not_an")):
        assert str(ours_err.value) == str(theirs_err.value)


def test_cyclic_momentum_cycles_as_torchs():
    """test_cycle_lr_with_momentum / _cycle_lr_with_adam: momentum (or beta1) goes the other way."""
    for adam in (False, True):
        def opt():
            o = make_opt(False, momentum=0.9)
            return torch.optim.Adam(o.param_groups, lr=0.05) if adam else o
        a, b = opt(), opt()
        kw = dict(base_lr=[0.01, 0.02], max_lr=[0.1, 0.2], step_size_up=2, step_size_down=3, mode="exp_range",
                  gamma=0.95, base_momentum=[0.8, 0.85], max_momentum=[0.9, 0.95])
        sa, sb = Cyclic(a, **kw), tl.CyclicLR(b, **kw)
        key = "betas" if adam else "momentum"
        for _ in range(EPOCHS):
            close([g[key] if not adam else g[key][0] for g in a.param_groups],
                  [g[key] if not adam else g[key][0] for g in b.param_groups])
            a.step(), b.step()
            sa.step(), sb.step()
        close(lrs(a), lrs(b))
