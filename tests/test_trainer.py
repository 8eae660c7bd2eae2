import json
import math

import pytest
import torch

from traintricks.evaluation import EarlyStopping
from traintricks.training import NonFiniteLossError, Trainer, build_trainer, run
from traintricks.training import checkpoint as ckpt


def final_weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_trains_digits_and_writes_every_output(tiny_cfg, tmp_path):
    summary = run(tiny_cfg("epochs=4", "model.widths=[16, 32]"), tmp_path / "r", progress=False)
    out = tmp_path / "r"
    assert summary["test_accuracy"] > 0.9                       # a real model, not a stub
    for key in ("test_accuracy", "best_epoch", "epochs", "wall_seconds", "stopped_early"):
        assert key in json.loads((out / "summary.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"):
        assert all(math.isfinite(r[key]) for r in lines), key
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in (out / "report.md").read_text()
    # weights in safetensors, the rest loadable with weights_only=True
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last.name == "epoch-0004" and len(ckpt.list_checkpoints(out / "checkpoints")) == 2
    state = torch.load(last / "state.pt", weights_only=True)
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert ckpt.load_weights(out / "model.safetensors").keys() == ckpt.load_weights(last / "model.safetensors").keys()


class Crash(Exception):
    pass


def crash_after(epoch):
    def cb(trainer, record):
        if record["epoch"] == epoch:
            raise Crash()
    return cb


@pytest.mark.parametrize("extra", [[], ["optim.name=adamw", "schedule.name=cosine", "data.augment=[\"flip\", \"crop\"]",
                                        "data.augment_from_epoch=1",
                                        "model.name=preact_resnet", "model.widths=[4, 8]", "model.blocks=[1, 1]",
                                        "ema.decay=0.9", "bag_of_tricks=true"]])
def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_cfg, tmp_path, extra):
    cfg = tiny_cfg("epochs=4", *extra)
    full = build_trainer(cfg, out_dir=tmp_path / "a", progress=False)
    full_summary = full.fit()
    with pytest.raises(Crash):
        build_trainer(cfg, out_dir=tmp_path / "b", progress=False, callbacks=[crash_after(2)]).fit()
    # a leftover half-written checkpoint must be ignored
    (tmp_path / "b" / "checkpoints" / ".tmp-epoch-0003-999").mkdir()
    resumed = build_trainer(cfg, out_dir=tmp_path / "b", progress=False)
    assert resumed.resume().name == "epoch-0002"
    summary = resumed.fit()
    assert_same_weights(final_weights(full), final_weights(resumed))
    if full.ema is not None:
        assert_same_weights(full.ema.state_dict(), resumed.ema.state_dict())
    assert summary["test_accuracy"] == full_summary["test_accuracy"]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def test_early_stopping_stops_and_restores_best(tiny_cfg, tmp_path):
    # 60 examples, a large constant rate: validation loss soon stops improving
    cfg = tiny_cfg("epochs=30", "data.limit=80", "data.val_size=20", "batch_size=16", "lr=0.5",
                   "schedule.name=constant", "early_stopping.name=patience", "early_stopping.patience=2")
    t = build_trainer(cfg, out_dir=tmp_path, progress=False)
    s = t.fit()
    assert s["stopped_early"] and s["epochs"] < 30
    best = t.early_stopping.best_epoch
    assert s["epochs"] == best + 2
    val = [r["val_loss"] for r in t.history]
    assert min(val) == val[best - 1]
    assert s["restored_best"]
    # the model now holds the best epoch's weights: its validation loss is the best one
    assert t.evaluate(t.val_loader)["loss"] == pytest.approx(val[best - 1], rel=1e-5)


def test_early_stopping_unit():
    es = EarlyStopping(patience=2, min_delta=0.1, monitor="val_accuracy")
    assert es.mode == "max"
    assert [es.update(i, {"val_accuracy": a}) for i, a in enumerate([0.5, 0.55, 0.7, 0.75, 0.79], 1)] == \
        [False, False, False, False, True]
    assert es.best_epoch == 3
    with pytest.raises(KeyError, match="val_loss"):
        EarlyStopping(monitor="val_loss").update(1, {"train_loss": 1.0})
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


class NanAt:
    """Cross-entropy that returns NaN from the given call on."""

    def __init__(self, call):
        self.calls, self.at = 0, call

    def __call__(self, logits, y):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if self.calls >= self.at else loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    t = build_trainer(tiny_cfg("epochs=3"), out_dir=tmp_path, progress=False)
    steps = len(t.train_loader)
    t.loss_fn = NanAt(steps + 3)                     # 3rd step of epoch 2; epoch-end evaluations count too
    with pytest.raises(NonFiniteLossError) as e:
        t.fit()
    assert "loss became nan" in str(e.value) and "epoch-0001" in str(e.value)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["epoch-0001"]
    fresh = build_trainer(tiny_cfg("epochs=3"), out_dir=tmp_path, progress=False)
    assert fresh.resume().name == "epoch-0001" and fresh.epoch == 1


def test_corrupt_and_unsafe_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load_weights(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "state.pt")
    with pytest.raises(ckpt.CheckpointError, match="state.pt"):
        ckpt.load_state(tmp_path / "state.pt")


def test_trainer_rejects_bad_settings():
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        Trainer(m, opt, torch.nn.functional.cross_entropy, [], epochs=0)
    with pytest.raises(ValueError, match="precision"):
        Trainer(m, opt, torch.nn.functional.cross_entropy, [], precision="fp8")


def test_grad_transforms_run_between_backward_and_step(tiny_cfg):
    t = build_trainer(tiny_cfg("epochs=1"), progress=False)
    seen = []

    def zero_grads(params):
        seen.append(len(params))
        for p in params:
            p.grad.zero_()

    t.grad_transforms = [zero_grads]
    t.optimizer.param_groups[0]["weight_decay"] = 0.0
    before = {k: v.clone() for k, v in t.model.named_parameters()}
    t.optimizer.defaults["momentum"] = 0.0
    for g in t.optimizer.param_groups:
        g["momentum"] = 0.0
    t.fit()
    assert seen and all(n == len(list(t.model.parameters())) for n in seen)
    for k, v in t.model.named_parameters():
        assert torch.equal(v, before[k]), k                  # zero gradients: nothing moved


def test_flip_tta_without_flip_training_warns(tiny_cfg):
    with pytest.warns(UserWarning, match="tta_flip"):
        build_trainer(tiny_cfg("eval.tta_flip=true"), progress=False)


def test_flip_tta_averages_the_mirror_logits(tiny_cfg):
    t = build_trainer(tiny_cfg("epochs=1"), progress=False)
    t.tta_flip = True
    x, y = t.test_loader.x[:50], t.test_loader.y[:50]
    t.model.eval()
    with torch.no_grad():
        logits = 0.5 * (t.model(x) + t.model(x.flip(-1)))
    expected = (logits.argmax(1) == y).float().mean().item()
    assert t.evaluate([(x, y)])["accuracy"] == pytest.approx(expected)


def test_accuracy_with_hard_and_soft_targets():
    from traintricks.evaluation import accuracy
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [0.0, 1.0, 0.5]])
    assert accuracy(logits, torch.tensor([0, 1, 0, 2])) == 0.5
    soft = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])
    assert accuracy(logits, soft) == 1.0


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")
def test_epoch_records_carry_the_gradient_norm_before_clipping(tiny_cfg):
    t = build_trainer(tiny_cfg("epochs=1", "grad_transforms=[{name = \"clip_norm\", max_norm = 0.01}]"), progress=False)
    norms = []
    orig = t.optimizer.step

    def spy(*a, **k):
        g = torch.cat([p.grad.flatten() for grp in t.optimizer.param_groups for p in grp["params"] if p.grad is not None])
        norms.append(g.norm().item())                   # after clipping: <= 0.01
        return orig(*a, **k)
    t.optimizer.step = spy
    t.fit()
    r = t.history[0]
    assert max(norms) <= 0.0100001 and r["grad_norm"] > 0.01          # the record holds the raw norm
    assert r["grad_norm_max"] >= r["grad_norm"] > 0
