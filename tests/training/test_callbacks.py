"""The engine's events, schedules stepped per step / per epoch / with a metric, batches and outputs in the forms
users have them, and the example callback (issue 16)."""
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from traintricks.callback import EVENTS, Callback
from traintricks.config import ConfigError
from traintricks.training import Trainer, build_trainer
from traintricks.training.callbacks import GradNormQuantiles


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches(x, y, b):
    return [(x[i:i + b], y[i:i + b]) for i in range(0, len(x), b)]


class Recorder(Callback):
    def __init__(self):
        self.events = []


for _e in EVENTS:                                    # every event, recorded by name
    if _e != "setup":
        setattr(Recorder, _e, (lambda name: lambda self, *a: self.events.append(name))(_e))


def test_events_fire_in_the_documented_order():
    x, y = _data(8)
    m = _model()
    rec = Recorder()
    t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), F.cross_entropy, _batches(x, y, 2),
                _batches(x, y, 4), epochs=1, accumulate_steps=2, progress=False, callbacks=[rec])
    t.fit()
    step = ["on_step_start"] + ["on_before_forward", "on_after_forward", "on_before_backward",
                                "on_after_backward"] * 2 + \
           ["on_before_optimizer_step", "on_after_optimizer_step", "on_step_end"]
    assert rec.events == ["on_fit_start", "on_epoch_start", *step, *step, "on_train_epoch_end",
                          "on_eval_outputs", "on_eval_outputs", "on_evaluate", "on_epoch_end", "on_fit_end"]


def test_a_plain_loop_needs_no_traintricks_model_data_or_config():
    x, y = _data(32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    m = _model()
    s = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), F.cross_entropy, loader, epochs=3,
                progress=False).fit()
    assert s["epochs"] == 3 and "test_accuracy" not in s


# ------------------------------------------------------------------------------------------------ schedules
def _lrs_per_step(t):
    lrs = []
    t.optimizer.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
    t.fit()
    return lrs


def test_a_users_step_lr_is_stepped_per_epoch():
    # before: a per-epoch StepLR given to the Trainer was stepped after every batch (3 batches: gamma^3 per epoch)
    x, y = _data(24)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with pytest.warns(UserWarning, match="scheduler_interval"):
        t = Trainer(m, opt, F.cross_entropy, _batches(x, y, 8), epochs=3, scheduler=sched, progress=False)
    assert _lrs_per_step(t) == [1.0] * 3 + [0.5] * 3 + [0.25] * 3 and sched.last_epoch == 3
    # explicit per-step: no warning, stepped after each optimizer step
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Trainer(m, opt, F.cross_entropy, _batches(x, y, 8), epochs=2, progress=False,
                    scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), scheduler_interval="step")
    assert _lrs_per_step(t) == [0.5 ** i for i in range(6)]


def test_torch_one_cycle_is_stepped_per_step_without_being_told():
    x, y = _data(24)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Trainer(m, opt, F.cross_entropy, _batches(x, y, 8), epochs=2, scheduler=sched, progress=False)
    _lrs_per_step(t)
    assert sched.last_epoch == 6


def test_reduce_on_plateau_is_stepped_with_the_monitored_metric():
    x, y = _data(24)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    seen = []

    class Spy(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics):
            seen.append(metrics)
            super().step(metrics)
    t = Trainer(m, opt, F.cross_entropy, _batches(x, y, 8), _batches(x, y, 24), epochs=3, progress=False,
                scheduler=Spy(opt, patience=0), scheduler_monitor="val_accuracy")
    t.fit()
    assert seen == [r["val_accuracy"] for r in t.history]
    with pytest.raises(ValueError, match="epoch"):
        Trainer(m, opt, F.cross_entropy, [], scheduler=Spy(opt), scheduler_interval="step")
    with pytest.raises(ValueError, match="takes no metric"):
        Trainer(m, opt, F.cross_entropy, [], scheduler=torch.optim.lr_scheduler.StepLR(opt, 1),
                scheduler_interval="epoch", scheduler_monitor="val_loss")


def test_config_chooses_the_interval_and_the_monitor(tiny_cfg):
    t = build_trainer(tiny_cfg("schedule.name=plateau", "schedule.monitor=val_accuracy", "schedule.mode=max"),
                      progress=False)
    assert t.find_callback(type(t.callbacks[0])) is not None
    cb = next(c for c in t.callbacks if c.name == "schedule")
    assert cb.interval == "epoch" and cb.monitor == "val_accuracy"
    cb = next(c for c in build_trainer(tiny_cfg("schedule.name=step", "schedule.interval=epoch",
                                                "schedule.step_epochs=1"), progress=False).callbacks
              if c.name == "schedule")
    assert cb.interval == "epoch"
    with pytest.raises(ConfigError, match="schedule.interval"):
        build_trainer(tiny_cfg("schedule.interval=batch"), progress=False)
    with pytest.raises(ConfigError, match="schedule.interval"):
        build_trainer(tiny_cfg("schedule.name=plateau", "schedule.interval=step"), progress=False)
    with pytest.raises(ConfigError, match="schedule.monitor"):
        build_trainer(tiny_cfg("schedule.monitor=val_loss"), progress=False)       # onecycle takes no metric
    with pytest.raises(ConfigError, match="schedule.monitor"):
        build_trainer(tiny_cfg("schedule.name=plateau", "data.val_size=0"), progress=False)


# ------------------------------------------------------------------------------------ batches and outputs
def _reference(x, y, b, epochs=2):
    """Plain PyTorch: SGD on (x, y) in batches of b."""
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(epochs):
        for xb, yb in _batches(x, y, b):
            opt.zero_grad()
            F.cross_entropy(m(xb), yb).backward()
            opt.step()
    return m


def _fit(batches, model=None, **kw):
    m = model or _model()
    Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), kw.pop("loss", F.cross_entropy), batches, epochs=2,
            progress=False, **kw).fit()
    return m


def _same(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["tuple", "extras", "dict", "dict_keys"])
def test_batch_forms(form):
    x, y = _data()
    ref = _reference(x, y, 8)
    plain = _batches(x, y, 8)
    if form == "tuple":
        got = _fit(plain)
    elif form == "extras":                                    # (x, y, weights, ids): the extras are passed by
        got = _fit([(a, b, torch.ones(len(b)), torch.arange(len(b))) for a, b in plain])
    elif form == "dict":
        got = _fit([{"input": a, "target": b, "id": torch.arange(len(b))} for a, b in plain])
    else:
        got = _fit([{"image": a, "label": b} for a, b in plain], batch_keys=("image", "label"))
    _same(got, ref)


def test_a_dict_batch_without_the_keys_names_them():
    x, y = _data(8)
    with pytest.raises(KeyError, match="batch_keys"):
        _fit([{"x": x, "y": y}])


class TwoHeads(torch.nn.Module):
    """A model with an auxiliary head: returns (main logits, auxiliary logits) or a dict."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.body, self.as_dict = _model(), as_dict
        self.aux = torch.nn.Linear(5, 3)

    def forward(self, x):
        main, aux = self.body(x), self.aux(x)
        return {"logits": main, "aux": aux} if self.as_dict else (main, aux)


@pytest.mark.parametrize("as_dict", [False, True])
def test_models_returning_tuples_or_dicts(as_dict):
    x, y = _data()
    ref = _reference(x, y, 8)
    m = TwoHeads(as_dict)                                     # loss on the prediction only: the body trains alone
    t = Trainer(m, torch.optim.SGD(m.body.parameters(), lr=0.5), F.cross_entropy, _batches(x, y, 8),
                _batches(x, y, 24), epochs=2, progress=False)
    t.fit()
    _same(m.body, ref)
    assert 0 <= t.history[-1]["val_accuracy"] <= 1

    # loss_inputs="all": the loss sees every output and the batch's extras (auxiliary head, per-example weights)
    def loss(outputs, target, extras=()):
        main, aux = (outputs["logits"], outputs["aux"]) if as_dict else outputs
        (w,) = extras
        return (w * (F.cross_entropy(main, target, reduction="none")
                     + 0.3 * F.cross_entropy(aux, target, reduction="none"))).mean()
    m2 = TwoHeads(as_dict)
    batches = [(a, b, torch.ones(len(b))) for a, b in _batches(x, y, 8)]
    Trainer(m2, torch.optim.SGD(m2.parameters(), lr=0.5), loss, batches, epochs=1, progress=False,
            loss_inputs="all").fit()
    m3 = TwoHeads(as_dict)
    opt = torch.optim.SGD(m3.parameters(), lr=0.5)
    for a, b, w in batches:
        opt.zero_grad()
        out = m3(a)
        main, aux = (out["logits"], out["aux"]) if as_dict else out
        (F.cross_entropy(main, b) + 0.3 * F.cross_entropy(aux, b)).backward()
        opt.step()
    for p, q in zip(m2.parameters(), m3.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- callback state
class Counter(Callback):
    name = "counter"

    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def test_callback_state_goes_into_the_checkpoint_under_its_name(tmp_path):
    x, y = _data()
    m = _model()
    c = Counter()
    t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), F.cross_entropy, _batches(x, y, 8), epochs=2,
                progress=False, callbacks=[c], out_dir=tmp_path)
    t.fit()
    assert c.steps == 6
    m2 = _model()
    c2 = Counter()
    t2 = Trainer(m2, torch.optim.SGD(m2.parameters(), lr=0.5), F.cross_entropy, _batches(x, y, 8), epochs=2,
                 progress=False, callbacks=[c2], out_dir=tmp_path)
    t2.resume()
    assert c2.steps == 6
    with pytest.raises(ValueError, match="two callbacks named 'counter'"):
        Trainer(m2, torch.optim.SGD(m2.parameters(), lr=0.5), F.cross_entropy, [], callbacks=[Counter(), Counter()])


# ------------------------------------------------------------------------------ the example callback
def test_grad_norm_quantiles_records_the_distribution_of_the_step_norms():
    from traintricks.training.callbacks import CALLBACKS
    assert CALLBACKS.get("grad_norm_quantiles") is GradNormQuantiles
    x, y = _data(40)
    m = _model()
    expected = []

    class Spy(Callback):                            # each step's global gradient norm, read in plain torch
        def on_before_optimizer_step(self, trainer, params):
            expected.append(torch.cat([p.grad.flatten() for p in params]).norm().item())
    t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), F.cross_entropy, _batches(x, y, 8), epochs=1,
                progress=False, callbacks=[GradNormQuantiles([0.5, 0.9]), Spy()])
    t.fit()
    r = t.history[0]
    want = torch.quantile(torch.tensor(expected, dtype=torch.float64), torch.tensor([0.5, 0.9], dtype=torch.float64))
    assert len(expected) == 5
    assert r["grad_norm_p50"] == pytest.approx(want[0].item(), rel=1e-5)
    assert r["grad_norm_p90"] == pytest.approx(want[1].item(), rel=1e-5)
    with pytest.raises(ValueError, match="quantiles"):
        GradNormQuantiles([1.5])


def test_the_steps_loss_is_there_detached_at_step_end():
    class LossLog(Callback):
        def __init__(self):
            self.losses = []

        def on_after_forward(self, trainer):
            self.last = float(trainer.loss.detach())

        def on_step_end(self, trainer):
            assert not trainer.loss.requires_grad
            self.losses.append((float(trainer.loss), self.last))

    x, y = _data(8)
    m = _model()
    log = LossLog()
    Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), F.cross_entropy, _batches(x, y, 4), epochs=1,
            progress=False, callbacks=[log]).fit()
    assert len(log.losses) == 2 and all(a == b for a, b in log.losses)     # the last micro-batch's loss


@pytest.mark.parametrize("overrides, key", [
    (['callbacks=[{name="swa", swa_start=2}]'], "callbacks[0]"),
    (['callbacks=[{name="ema", decay=0.9}, "swa"]'], "callbacks[1]"),
    (['callbacks=["swa", {name="ema", decay=0.9}]'], "callbacks[0]"),     # either order is refused
    (["precision=fp16", "optim.name=sam"], "precision"),
])
def test_refusals_found_while_building_the_trainer_are_config_errors_naming_the_key(tiny_cfg, tmp_path, overrides,
                                                                                    key):
    # a new user got Python tracebacks for these (the README promises a one-line error naming the key)
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}'"):
        build_trainer(tiny_cfg(*overrides), out_dir=tmp_path / "r", progress=False)


def test_the_epoch_record_has_the_rate_the_last_step_trained_with(tiny_cfg, tmp_path):
    # a new user saw the cosine schedule's values in metrics.jsonl while SWA trained at its own rate
    class Seen(Callback):
        def __init__(self):
            self.last = None

        def on_before_optimizer_step(self, trainer, params):
            self.last = trainer.current_lr()

        def on_train_epoch_end(self, trainer, record):
            assert record["lr"] == self.last

    seen = Seen()
    cfg = tiny_cfg("epochs=3", "schedule.name=cosine", 'callbacks=[{name="swa", swa_start=1, swa_lr=0.05, '
                   'anneal_epochs=1}]')
    t = build_trainer(cfg, out_dir=tmp_path / "r", progress=False, callbacks=[seen])
    t.fit()
    assert [r["lr"] for r in t.history][1:] != [0.0, 0.0] and t.history[-1]["lr"] == pytest.approx(0.05)
