import math

import pytest
import torch

from traintricks.optim import OPTIMIZERS, SCHEDULES, param_groups


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def test_param_groups_skip_norm_and_bias():
    m = small_model()
    decay, no_decay = param_groups(m, 0.1)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    (everything,) = param_groups(m, 0.1, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6


@pytest.mark.parametrize("name, kwargs, ref", [
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("adam", {"weight_decay": 1e-3}, lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=1e-3)),
    ("adamw", {"weight_decay": 1e-2}, lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=1e-2)),
])
def test_registered_optimizers_match_torch(name, kwargs, ref):
    a, b = small_model().double(), small_model().double()
    oa, ob = OPTIMIZERS.get(name)(a.parameters(), lr=0.05, **kwargs), ref(b.parameters())
    x = torch.randn(32, 4, dtype=torch.float64)
    for _ in range(20):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, kwargs", [("sgd", {"lr": -1.0}), ("sgd", {"lr": 0.1, "momentum": 1.0}),
                                          ("sgd", {"lr": 0.1, "momentum": 0.0, "nesterov": True}),
                                          ("adam", {"lr": 0.1, "betas": [0.9, 1.0]}),
                                          ("adamw", {"lr": 0.1, "weight_decay": -1.0})])
def test_invalid_hyper_parameters_rejected(name, kwargs):
    with pytest.raises(ValueError):
        OPTIMIZERS.get(name)(small_model().parameters(), **kwargs)


def run_schedule(name, total, per_epoch, **kw):
    opt = OPTIMIZERS.get("sgd")(small_model().parameters(), lr=1.0)
    sched = SCHEDULES.get(name)(opt, total, per_epoch, **kw)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])      # the rate this step uses
        opt.step()
        sched.step()
    return lrs, opt


def test_onecycle_peak_and_end():
    lrs, opt = run_schedule("onecycle", 100, 10, pct_start=0.25, div_factor=10, final_div_factor=100)
    assert lrs[0] == pytest.approx(0.1)
    # torch's OneCycleLR puts the peak at step pct_start*total - 1 (fractional): within a step of it
    assert max(lrs) > 0.98 and abs(lrs.index(max(lrs)) - 25) <= 1
    assert lrs[-1] > 0 and opt.param_groups[0]["lr"] == pytest.approx(1.0 / 1000)   # never below the floor
    assert min(lrs) >= 1.0 / 1000 - 1e-12


def test_cosine_with_warmup_closed_form():
    lrs, _ = run_schedule("cosine", 100, 10, warmup_epochs=1.0)
    for t in (0, 5, 9):
        assert lrs[t] == pytest.approx((t + 1) / 10)
    for t in (10, 40, 99):
        assert lrs[t] == pytest.approx(0.5 * (1 + math.cos(math.pi * (t - 10) / 90)))


def test_step_schedule():
    lrs, _ = run_schedule("step", 30, 5, step_epochs=2, gamma=0.5)
    assert lrs[9] == 1.0 and lrs[10] == 0.5 and lrs[29] == 0.25
