"""Issue 15 items 4 and 13: schedules compose as torch's, one set of defaults, short runs of the default recipe."""
import inspect
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as tl

from traintricks.optim import (SCHEDULES, ConstantLR, CosineRestarts, Cyclic, ExponentialLR, MultiCycle, OneCycle,
                               StepLR, Warmup)
from traintricks.optim.schedules import ScheduleWarning


def _opt(lr=1.0, momentum=0.9, groups=1):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(params)], lr=lr,
                           momentum=momentum)


def _run(step, opt, n, key="lr"):
    """The value of param group 0's ``key`` after each of ``n`` steps."""
    out = []
    for _ in range(n):
        opt.step()
        step()
        out.append(opt.param_groups[0][key])
    return out


# ------------------------------------------------------------------------------------------------ item 4
def test_step_and_exponential_stepped_together_multiply_as_torchs():
    o = _opt()
    a, b = StepLR(o, 2, 0.1), ExponentialLR(o, 0.5)
    ours = _run(lambda: (a.step(), b.step()), o, 4)
    assert ours == pytest.approx([0.5, 0.025, 0.0125, 0.000625], rel=1e-12)         # the right values
    r = _opt()
    c, d = tl.StepLR(r, 2, 0.1), tl.ExponentialLR(r, 0.5)
    assert ours == pytest.approx(_run(lambda: (c.step(), d.step()), r, 4), rel=1e-12)


@pytest.mark.parametrize("wrapper", ["chained", "sequential"])
def test_ours_keep_a_torch_constantlr_factor_in_chained_and_sequential(wrapper):
    def build(step_cls, exp_cls, o):
        const = tl.ConstantLR(o, factor=0.5, total_iters=3)
        if wrapper == "chained":
            return tl.ChainedScheduler([const, step_cls(o, 2, 0.1), exp_cls(o, 0.9)])
        return tl.SequentialLR(o, [const, exp_cls(o, 0.9)], milestones=[4])
    o, r = _opt(), _opt()
    s, t = build(StepLR, ExponentialLR, o), build(tl.StepLR, tl.ExponentialLR, r)
    assert o.param_groups[0]["lr"] == pytest.approx(r.param_groups[0]["lr"])
    assert _run(s.step, o, 10) == pytest.approx(_run(t.step, r, 10), rel=1e-12)


def test_constantlr_takes_torchs_arguments_and_defaults():
    ours = inspect.signature(ConstantLR.__init__).parameters
    theirs = inspect.signature(tl.ConstantLR.__init__).parameters
    assert [(k, v.default) for k, v in ours.items()] == [(k, v.default) for k, v in theirs.items()]
    o, r = _opt(), _opt()
    s, t = ConstantLR(o), tl.ConstantLR(r)
    assert _run(s.step, o, 8) == pytest.approx(_run(t.step, r, 8))
    with pytest.raises(ValueError, match="between 0 and 1"):
        ConstantLR(_opt(), factor=1.5)


def test_closed_form_equals_the_chained_values():
    for make in (lambda o: StepLR(o, 3, 0.5), lambda o: ExponentialLR(o, 0.8), lambda o: ConstantLR(o, 0.25, 4),
                 lambda o: Warmup(o, 4, start_factor=0.2), lambda o: Warmup(o, 4)):
        o = _opt(0.3, groups=2)
        s = make(o)
        for t in range(1, 9):
            o.step()
            s.step()
            chained = [g["lr"] for g in o.param_groups]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # torch's deprecation warning for step(epoch)
                s.step(t)
            assert [g["lr"] for g in o.param_groups] == pytest.approx(chained, rel=1e-12), (type(s).__name__, t)


def test_warmup_is_linearlr_and_chains_with_zero_start():
    o, r = _opt(), _opt()
    s, t = Warmup(o, 5, start_factor=0.25), tl.LinearLR(r, 0.25, 1.0, 5)
    assert _run(s.step, o, 8) == pytest.approx(_run(t.step, r, 8), rel=1e-12)
    # start_factor 0 (LinearLR refuses it) chained with StepLR, either order: the factors multiply
    for first_warmup in (True, False):
        o = _opt()
        w, st = Warmup(o, 4), StepLR(o, 3, 0.1)
        ch = tl.ChainedScheduler([w, st] if first_warmup else [st, w])
        got = _run(ch.step, o, 8)
        want = [min(1.0, t / 4) * 0.1 ** (t // 3) for t in range(1, 9)]
        assert got == pytest.approx(want, rel=1e-12), first_warmup


def test_cyclic_cycles_momentum_with_per_group_lists_as_torch():
    for beta in (False, True):
        def opt():
            ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
            if beta:
                return torch.optim.Adam([{"params": [p]} for p in ps], lr=0.1)
            return torch.optim.SGD([{"params": [p]} for p in ps], lr=0.1, momentum=0.9)
        o, r = opt(), opt()
        kw = dict(base_lr=[0.01, 0.02], max_lr=[0.1, 0.3], step_size_up=3, step_size_down=5, mode="triangular2",
                  base_momentum=[0.8, 0.7], max_momentum=[0.9, 0.95])
        s, t = Cyclic(o, **kw), tl.CyclicLR(r, **kw)
        key = "betas" if beta else "momentum"
        for _ in range(20):
            for g, h in zip(o.param_groups, r.param_groups):
                assert g["lr"] == pytest.approx(h["lr"], rel=1e-12) and g[key] == pytest.approx(h[key], rel=1e-12)
            o.step(), r.step()
            s.step(), t.step()
    with pytest.raises(ValueError, match="momentum"):
        Cyclic(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))]), 0.01, 0.1)
    with pytest.raises(ValueError, match="same length"):
        Cyclic(_opt(groups=2), [0.01], 0.1)


def test_owners_equal_their_torch_twins():
    o, r = _opt(0.5, groups=2), _opt(0.5, groups=2)
    s, t = CosineRestarts(o, 3, 2, eta_min=0.01), tl.CosineAnnealingWarmRestarts(r, 3, 2, eta_min=0.01)
    assert _run(s.step, o, 40) == pytest.approx(_run(t.step, r, 40), rel=1e-12)
    o, r = _opt(groups=2), _opt(groups=2)
    kw = dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4, three_phase=True)
    s = OneCycle(o, [1.0, 2.0], 30, anneal="cos", base_momentum=[0.85, 0.8], max_momentum=[0.95, 0.9], **kw)
    t = tl.OneCycleLR(r, [1.0, 2.0], 30, anneal_strategy="cos", base_momentum=[0.85, 0.8], max_momentum=[0.95, 0.9],
                      **kw)
    for _ in range(29):
        for g, h in zip(o.param_groups, r.param_groups):
            assert (g["lr"], g["momentum"]) == pytest.approx((h["lr"], h["momentum"]), rel=1e-12)
        o.step(), r.step()
        s.step(), t.step()


def test_config_names_bind_the_class_defaults():
    """One set of defaults: every option a config name shares with its class defaults to the class's value."""
    pairs = {"onecycle": OneCycle, "multicycle": OneCycle, "cyclic": Cyclic, "step": StepLR}
    for name, cls in pairs.items():
        cls_defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        shared = {k: p.default for k, p in SCHEDULES.options(name).items() if k in cls_defaults}
        assert shared and all(v == cls_defaults[k] for k, v in shared.items()), name
    assert SCHEDULES.options("cosine_restarts")["mult"].default == \
        inspect.signature(CosineRestarts.__init__).parameters["T_mult"].default


def test_default_recipe_schedule_is_unchanged_for_a_full_run():
    """The default recipe's multicycle on a full run (its epochs of 226 steps) is, step by step, torch's OneCycleLR
    with the recipe's values (pct 0.25, div 10, final 100, linear) over its two cycles at peaks 1
    and 0.5."""
    from traintricks.config import DEFAULTS
    spec = {k: v for k, v in DEFAULTS["schedule"].items() if k != "name"}
    per = 226
    total = DEFAULTS["epochs"] * per
    first, second = DEFAULTS["schedule"]["cycle_epochs"]
    assert first + second == DEFAULTS["epochs"] and DEFAULTS["schedule"]["peaks"] == [1.0, 0.5]
    o = _opt(0.2)
    s = SCHEDULES.get(DEFAULTS["schedule"]["name"])(o, total, per, **spec)
    ours = []
    for _ in range(total):
        ours.append((o.param_groups[0]["lr"], o.param_groups[0]["momentum"]))
        o.step()
        s.step()
    ref = []
    for n, peak in ((first * per, 1.0), (second * per, 0.5)):
        r = _opt(0.2 * peak)
        t = tl.OneCycleLR(r, 0.2 * peak, n, pct_start=0.25, anneal_strategy="linear", div_factor=10.0,
                          final_div_factor=100.0)
        for _ in range(n):
            ref.append((r.param_groups[0]["lr"], r.param_groups[0]["momentum"]))
            r.step()
            t.step()
    assert len(ref[:total]) == total
    assert [a for a, _ in ours] == pytest.approx([a for a, _ in ref[:total]], rel=1e-9, abs=1e-15)
    assert [m for _, m in ours] == pytest.approx([m for _, m in ref[:total]], rel=1e-9)


# ----------------------------------------------------------------------------------------------- item 13
def test_multicycle_too_short_for_its_cycles_falls_back_with_a_note():
    """`--set epochs=1 --set data.limit=1000 --set parallel.mode=async`: 3 steps, cycles [1, 2] -> one one-cycle."""
    o = _opt(0.2)
    with pytest.warns(UserWarning, match=r"fewer than 2 steps.*one one-cycle over the 3 steps"):
        s = SCHEDULES.get("multicycle")(o, 3, 3, cycle_epochs=[5, 20], peaks=[1.0, 0.5], min_warmup_steps=15)
    assert isinstance(s, MultiCycle) and len(s.cycles) == 1
    lrs = [o.param_groups[0]["lr"]] + _run(s.step, o, 3)
    assert all(0 < v <= 0.2 for v in lrs)


def test_short_cycles_warm_up_no_faster_than_min_warmup_steps():
    """A cycle whose warm-up (pct_start of it) is shorter than min_warmup_steps peaks at peak * warm-up / min."""
    o = _opt(0.2)
    s = SCHEDULES.get("multicycle")(o, 14, 7, cycle_epochs=[5, 20], peaks=[1.0, 0.5], min_warmup_steps=15)
    lrs = [o.param_groups[0]["lr"]] + _run(s.step, o, 13)
    # cycles of 3 and 11 (+1) steps: warm-ups 0.75 and 3 steps -> peaks 0.2 * 0.05 and 0.1 * 0.2
    assert max(lrs[:3]) <= 0.2 * 0.75 / 15 + 1e-12 and max(lrs[3:]) <= 0.1 * 3 / 15 + 1e-12
    o = _opt(0.2)                                         # long cycles: untouched
    s = SCHEDULES.get("multicycle")(o, 400, 16, cycle_epochs=[5, 20], min_warmup_steps=15)
    assert max([o.param_groups[0]["lr"]] + _run(s.step, o, 399)) == pytest.approx(0.2, rel=0.02)


def test_a_short_run_of_the_default_recipe_learns(tiny_cfg):
    """30 optimizer steps of the default recipe's schedule (and lr, optimizer, batch size) on digits, fp32."""
    from traintricks.config import DEFAULTS, load_config
    from traintricks.training import build_trainer
    cfg = load_config(None, ["data.name=digits", "epochs=6", "precision=fp32", "channels_last=false",
                             "callbacks=[]", "data.augment=[]", "data.val_size=0.1",
                             "test_every_epoch=false"])
    assert cfg["schedule"] == DEFAULTS["schedule"] and cfg["lr"] == DEFAULTS["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer(cfg, progress=False)
        assert 20 <= len(trainer.train_loader) * 6 <= 40
        assert trainer.fit()["test_accuracy"] > 0.5                  # chance is 0.1


# ------------------------------------------------------------- testers' faults after issue 15: Warmup from 0
def _others():
    return {"exponential": (lambda o: ExponentialLR(o, 0.9), lambda o: tl.ExponentialLR(o, 0.9)),
            "step": (lambda o: StepLR(o, 1, 0.5), lambda o: tl.StepLR(o, 1, 0.5))}


@pytest.mark.parametrize("other", ["exponential", "step"])
@pytest.mark.parametrize("order", ["other_first", "warmup_first"])
@pytest.mark.parametrize("how", ["by_hand", "chained"])
def test_warmup_from_zero_multiplies_what_another_schedule_does_either_order(other, order, how):
    """`ExponentialLR(opt, 0.9)` then `Warmup(opt, 4)` (start_factor 0) stepped 4 times gave 0.25, 0.45, 0.6075,
    0.729 (the factor 0.9 applied to the zero rate was lost); right: torch's schedule alone times t/4."""
    ours_other, torch_other = _others()[other]
    o = _opt(momentum=0.0)
    if order == "other_first":                       # constructed and stepped in this order
        scheds = [ours_other(o), Warmup(o, 4)]
    else:
        w = Warmup(o, 4)
        scheds = [w, ours_other(o)]
    assert o.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-25)          # step 0: (about) rate 0
    if how == "chained":
        ch = tl.ChainedScheduler(scheds)
        got = _run(ch.step, o, 10)
    else:
        got = _run(lambda: [s.step() for s in scheds], o, 10)
    r = _opt(momentum=0.0)
    t = torch_other(r)
    want = [lr * min(1.0, k / 4) for k, lr in enumerate(_run(t.step, r, 10), start=1)]
    assert got == pytest.approx(want, rel=1e-12)
    if other == "exponential":
        assert got[:4] == pytest.approx([0.225, 0.405, 0.5468, 0.6561], abs=1e-4)   # the testers' right values


def test_warmup_from_zero_takes_a_rate_set_by_an_owner_stepped_before_it():
    """After the zero step, a rate *set* by someone else (a closed-form owner) is not divided by the zero factor."""
    o, r = _opt(momentum=0.0), _opt(momentum=0.0)
    ch = tl.ChainedScheduler([tl.CosineAnnealingWarmRestarts(o, 10), Warmup(o, 4)])
    t = tl.CosineAnnealingWarmRestarts(r, 10)
    got, want = _run(ch.step, o, 1), _run(t.step, r, 1)
    assert got == pytest.approx([want[0] * 0.25], rel=1e-12)
    o, r = _opt(momentum=0.0), _opt(momentum=0.0)                     # wrapping: the owner's rate times t/4
    s, t = Warmup(o, 4, schedule=CosineRestarts(o, 10)), tl.CosineAnnealingWarmRestarts(r, 10)
    want = [lr * min(1.0, k / 4) for k, lr in enumerate(_run(t.step, r, 12), start=1)]
    assert _run(s.step, o, 12) == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------- testers' faults after issue 15: short runs, by name
def test_cosine_too_short_for_its_warmup_warms_up_over_half_the_run_with_a_note():
    """`--config configs/resnet.toml --set epochs=1` raised ConfigError 'warmup_epochs (1.0) must be shorter than
    training': a 10-step run with a 1-epoch (10-step) warm-up now warms up over 5 steps, then cosine."""
    import math
    o = _opt(momentum=0.0)
    with pytest.warns(UserWarning, match=r"schedule cosine: warmup_epochs 1.0 \(10 steps\).*10-step run.*over 5 steps"):
        s = SCHEDULES.get("cosine")(o, 10, 10, warmup_epochs=1.0)
    lrs = [o.param_groups[0]["lr"]] + _run(s.step, o, 9)
    want = [(t + 1) / 5 if t < 5 else 0.5 * (1 + math.cos(math.pi * (t - 5) / 5)) for t in range(10)]
    assert lrs == pytest.approx(want, rel=1e-12)
    with warnings.catch_warnings():                 # a run long enough: no note, the warm-up as asked
        warnings.simplefilter("error")
        SCHEDULES.get("cosine")(_opt(), 20, 10, warmup_epochs=1.0)


def test_resnet_config_for_one_epoch_builds_with_a_note():
    from tests.conftest import PRECISION
    from traintricks.config import load_config
    from traintricks.training import build_trainer
    cfg = load_config("configs/resnet.toml", ["epochs=1", "data.name=digits", "data.limit=300",
                                              f"precision={PRECISION}", "channels_last=false"])
    with pytest.warns(UserWarning, match="schedule cosine: warmup_epochs 1.0"):
        trainer = build_trainer(cfg, progress=False)
    assert trainer is not None


@pytest.mark.parametrize("name, kw, note", [
    ("cosine_restarts", {"first_epochs": 2.0}, r"one cosine period over the 10 steps"),
    ("cyclic", {"half_cycle_epochs": 2.0}, r"half-cycles of 5 steps"),
    ("step", {"step_epochs": 10}, r"never decays"),
    ("batch_size_increase", {"milestones": [5, 10]}, r"never grows"),
    ("multicycle", {"cycle_epochs": [5, 20]}, r"one one-cycle over the 3 steps"),
])
def test_every_schedule_name_too_long_for_the_run_falls_back_with_a_one_line_note(name, kw, note):
    """A run too short for a schedule's options never fails: a sane schedule for its length and one warning."""
    total, per = (3, 3) if name == "multicycle" else (10, 10)
    o = _opt(momentum=0.9)
    with pytest.warns(UserWarning, match=note) as rec:
        s = SCHEDULES.get(name)(o, total, per, **kw)
    assert len([w for w in rec if w.category is ScheduleWarning]) == 1 and "\n" not in str(rec[0].message)
    lrs = [o.param_groups[0]["lr"]] + _run(s.step, o, total - 1)
    assert all(0 < v <= 1.0 + 1e-12 for v in lrs)
    if name == "cosine_restarts":       # one period over the run, as torch's CosineAnnealingWarmRestarts(T_0=10)
        r = _opt(momentum=0.9)
        t = tl.CosineAnnealingWarmRestarts(r, 10)
        assert lrs == pytest.approx([1.0] + _run(t.step, r, 9), rel=1e-12)
    if name == "cyclic":                # up and back down inside the run, as torch's CyclicLR(step_size_up=5)
        r = _opt(momentum=0.9)
        t = tl.CyclicLR(r, 0.1, 1.0, 5)
        assert lrs == pytest.approx([0.1] + _run(t.step, r, 9), rel=1e-12)
    if name == "step":
        assert lrs == [1.0] * 10
    with warnings.catch_warnings():                 # long enough: no note
        warnings.simplefilter("error")
        SCHEDULES.get(name)(_opt(), 100 * total, per, **kw)


# ------------------------------------------------- testers' faults after issue 15: step(epoch) with a fraction
@pytest.mark.parametrize("T_mult, eta_min, epoch, right", [(1, 0.0, 0.5, 0.96194), (2, 0.0, 11.9, 0.00039),
                                                           (1, 0.1, 5.25, None), (2, 0.1, 2.75, None),
                                                           (3, 0.05, 17.4, None)])
def test_cosine_restarts_step_takes_fractional_epochs_as_torch(T_mult, eta_min, epoch, right):
    """`CosineRestarts(o, 4).step(0.5)` gave 1.0 (the fraction truncated); torch's documented
    `step(epoch + i / iters)` gives 0.96194 (epoch 11.9 with T_mult=2: 0.00039). Then step() keeps the fraction."""
    o, r = _opt(momentum=0.0), _opt(momentum=0.0)
    s, t = CosineRestarts(o, 4, T_mult, eta_min), tl.CosineAnnealingWarmRestarts(r, 4, T_mult, eta_min)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # torch's twin gives no warning for this use
        s.step(epoch)
        t.step(epoch)
    assert o.param_groups[0]["lr"] == pytest.approx(r.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
    if right is not None:
        assert o.param_groups[0]["lr"] == pytest.approx(right, abs=1e-5)
    assert (s.last_epoch, s.T_i) == (t.last_epoch, t.T_i) and s.T_cur == pytest.approx(t.T_cur, rel=1e-12)
    assert _run(s.step, o, 12) == pytest.approx(_run(t.step, r, 12), rel=1e-10, abs=1e-15)
    # a state saved after a fraction continues the same, ours -> torch and torch -> ours
    s.step(epoch + 1.5), t.step(epoch + 1.5)
    o2, r2 = _opt(momentum=0.0), _opt(momentum=0.0)
    s2, t2 = CosineRestarts(o2, 4, T_mult, eta_min), tl.CosineAnnealingWarmRestarts(r2, 4, T_mult, eta_min)
    s2.load_state_dict(t.state_dict())
    t2.load_state_dict(s.state_dict())
    assert set(s.state_dict()) == set(t.state_dict())
    want = _run(t.step, r, 6)
    assert _run(s2.step, o2, 6) == pytest.approx(want, rel=1e-10, abs=1e-15)
    assert _run(t2.step, r2, 6) == pytest.approx(want, rel=1e-10, abs=1e-15)
    with pytest.raises(ValueError, match="Expected non-negative epoch, but got -0.5"):
        s.step(-0.5)


def test_multicycle_step_with_a_fractional_epoch_is_onecyclelr_of_its_cycle():
    """MultiCycle's closed form at a fractional position inside its second cycle is torch's OneCycleLR of that
    cycle at the fraction (rate and momentum)."""
    o = _opt(momentum=0.9)
    s = MultiCycle(o, 1.0, [8, 20], [1.0, 0.5])
    for pos in (9.5, 13.25, 20.75, 3.5):
        start, n, peak = (8, 20, 0.5) if pos >= 8 else (0, 8, 1.0)
        r = _opt(momentum=0.9)
        t = tl.OneCycleLR(r, peak, n, pct_start=0.25, anneal_strategy="linear", div_factor=10.0,
                          final_div_factor=100.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                   # torch's step(epoch) deprecation warning
            s.step(pos)
            t.step(pos - start)
        g, h = o.param_groups[0], r.param_groups[0]
        assert (g["lr"], g["momentum"]) == pytest.approx((h["lr"], h["momentum"]), rel=1e-12)


# ------------------------------------------------- augmentation starting at a cycle boundary moves with the cycles
@pytest.mark.parametrize("epochs, start, want", [(24, 7, 7), (8, 7, 2), (48, 7, 14), (12, 7, 4),
                                                 (8, 3, 3),      # not at a boundary: kept
                                                 (8, 0, 0)])
def test_augment_from_epoch_at_a_cycle_boundary_is_rescaled_with_the_cycles(epochs, start, want):
    from traintricks.config import load_config
    from traintricks.training.recipe import augment_from_epoch
    cfg = load_config(None, [f"epochs={epochs}", f"data.augment_from_epoch={start}", "schedule.cycle_epochs=[7, 17]"])
    assert cfg["schedule"]["name"] == "multicycle"               # the default recipe's schedule
    assert augment_from_epoch(cfg) == want
    other = load_config(None, [f"epochs={epochs}", f"data.augment_from_epoch={start}", "schedule.name=onecycle"])
    assert augment_from_epoch(other) == start                     # no cycles to follow: as given


def test_a_shortened_default_recipe_augments_its_second_cycle(tiny_cfg):
    """Found by a new user: on --set epochs=8 the cycles were rescaled (2 + 6) but crop/flip still started at
    epoch 7; the loader and the TTA now start with the second cycle."""
    from traintricks.config import DEFAULTS
    from traintricks.training import build_trainer
    from traintricks.training.callbacks import FlipTTA
    t = build_trainer(tiny_cfg("epochs=8", "schedule.name=multicycle", "schedule.cycle_epochs=[7, 17]",
                               f"data.augment_from_epoch={DEFAULTS['data']['augment_from_epoch']}",
                               'data.augment=["flip"]', 'callbacks=["tta_flip"]'), progress=False)
    assert t.train_loader.transform_from_epoch == 2
    assert t.find_callback(FlipTTA).from_epoch == 2


@pytest.mark.parametrize("name, extra, floor", [("onecycle", [], 0.05 / 10 / 100),
                                                ("multicycle", ["schedule.cycle_epochs=[1, 2]",
                                                                "schedule.peaks=[1.0, 0.5]"], 0.025 / 10 / 100)])
def test_the_last_update_trains_at_the_cycle_s_final_rate(tiny_cfg, name, extra, floor):
    """Found by a new user: onecycle and multicycle planned one step more than the run takes, so the last update
    trained one step short of the cycle's floor (a 15-step one-cycle ended at 0.017 instead of 0.0002). Recorded
    through the Trainer, before each optimizer step."""
    from traintricks.callback import Callback
    from traintricks.training import build_trainer
    lrs = []

    class Rates(Callback):
        name = "rates"

        def on_before_optimizer_step(self, trainer, params):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    t = build_trainer(tiny_cfg("epochs=3", "lr=0.05", f"schedule.name={name}", "schedule.min_warmup_steps=0",
                               "optim.name=sgd", *extra), progress=False, callbacks=[Rates()])
    t.fit()
    assert len(lrs) == 3 * len(t.train_loader) >= 6
    assert lrs[-1] == pytest.approx(floor, rel=1e-9)
    assert lrs[-2] > lrs[-1] and min(lrs) == pytest.approx(min(floor, lrs[-1]))
