"""Issue 15 items 4 and 13: schedules compose as torch's, one set of defaults, short runs of the default recipe."""
import inspect
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as tl

from traintricks.optim import (SCHEDULES, ConstantLR, CosineRestarts, Cyclic, ExponentialLR, MultiCycle, OneCycle,
                               StepLR, Warmup)


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
    """The default recipe's multicycle on a 25-epoch run (226 steps an epoch) is, step by step, torch's OneCycleLR
    with the recipe's values (pct 0.25, div 10, final 100, linear) over 5 and 20 epochs at peaks 1 and 0.5."""
    from traintricks.config import DEFAULTS
    spec = {k: v for k, v in DEFAULTS["schedule"].items() if k != "name"}
    total, per = 25 * 226, 226
    o = _opt(0.2)
    s = SCHEDULES.get(DEFAULTS["schedule"]["name"])(o, total, per, **spec)
    ours = []
    for _ in range(total):
        ours.append((o.param_groups[0]["lr"], o.param_groups[0]["momentum"]))
        o.step()
        s.step()
    ref = []
    for n, peak in ((1130, 1.0), (4521, 0.5)):
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
                             "eval.tta_flip=false", "data.augment=[]", "data.val_size=0.1",
                             "eval.test_every_epoch=false"])
    assert cfg["schedule"] == DEFAULTS["schedule"] and cfg["lr"] == DEFAULTS["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer(cfg, progress=False)
        assert 20 <= len(trainer.train_loader) * 6 <= 40
        assert trainer.fit()["test_accuracy"] > 0.5                  # chance is 0.1
