"""Exact resume at any step (issue 16): a run killed with SIGKILL anywhere -- mid-epoch, inside a gradient
accumulation group, during an evaluation, while a checkpoint is being written -- and resumed ends with the weights
of an uninterrupted run, bit for bit; with a weight EMA, accumulation, augmentation, gradient noise (its own RNG)
and a plateau schedule on. NaN/Inf in an evaluation ends a run like a NaN in training."""
import json
import multiprocessing as mp
import os
import random
import signal

import pytest
import torch

from traintricks.callback import Callback
from traintricks.training import NonFiniteLossError, build_trainer, run
from traintricks.training import checkpoint as ckpt

RESUME = ["epochs=3", "data.limit=400", "batch_size=32", "accumulate_steps=2", "ema.decay=0.9",
          'data.augment=["flip", "crop"]', "data.augment_from_epoch=1", "schedule.name=plateau",
          "schedule.patience=0", "schedule.factor=0.5", "schedule.mode=max", 'grad_transforms=["gradient_noise"]',
          "checkpoint_every_steps=1", "threads=1", "precision=fp32"]


class KillAt(Callback):
    """SIGKILL this process at the ``n``-th ``event`` (a micro-batch's backward, an evaluation, a checkpoint
    being written)."""

    name = "kill"

    def __init__(self, event: str, n: int) -> None:
        self.event, self.n, self.count = event, n, 0

    def _tick(self, event):
        if event == self.event:
            self.count += 1
            if self.count == self.n:
                os.kill(os.getpid(), signal.SIGKILL)

    def on_after_backward(self, trainer):
        self._tick("on_after_backward")

    def on_evaluate(self, trainer, split, metrics):
        self._tick("on_evaluate")

    def on_save_checkpoint(self, trainer, directory):
        self._tick("on_save_checkpoint")


def _killed_run(cfg, out, event, n):
    torch.set_num_threads(1)
    run(cfg, out, progress=False, callbacks=[KillAt(event, n)])
    os._exit(0)                                 # not killed: the test fails on the exit code


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _weights(path):
    return ckpt.load_weights(path)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_at_random_steps_and_resume_gives_bit_identical_weights(tiny_cfg, tmp_path, one_thread):
    cfg = tiny_cfg(*RESUME)
    ref = run(cfg, tmp_path / "ref", progress=False)
    ref_model = _weights(tmp_path / "ref" / "model.safetensors")           # the EMA (the evaluated model)
    ref_live = _weights(ckpt.latest_checkpoint(tmp_path / "ref" / "checkpoints") / "model.safetensors")
    micro = len(build_trainer(cfg, progress=False).train_loader)          # micro-batches per epoch
    rng = random.Random(16)
    kills = [("on_after_backward", k) for k in sorted(rng.sample(range(3, 3 * micro), 3))]
    kills += [("on_after_backward", micro + 3),          # inside the 2nd epoch, half-way through a group
              ("on_evaluate", 3),                        # in epoch 2's validation
              ("on_save_checkpoint", micro // 2 + 4)]    # while a checkpoint is being written
    ctx = mp.get_context("fork")
    for i, (event, n) in enumerate(kills):
        out = tmp_path / f"k{i}"
        p = ctx.Process(target=_killed_run, args=(cfg, out, event, n))
        p.start()
        p.join(60)
        assert p.exitcode == -signal.SIGKILL, (event, n, p.exitcode)
        assert not (out / "summary.json").exists()
        summary = run(None, out, resume=True, progress=False)
        live = _weights(ckpt.latest_checkpoint(out / "checkpoints") / "model.safetensors")
        assert _same(_weights(out / "model.safetensors"), ref_model), (event, n)
        assert _same(live, ref_live), (event, n)
        assert summary["test_accuracy"] == ref["test_accuracy"]
        hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        ref_hist = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
        assert [r["val_loss"] for r in hist] == [r["val_loss"] for r in ref_hist]
        assert [r["lr"] for r in hist] == [r["lr"] for r in ref_hist]
    # the plateau schedule acted (mode=max on a falling validation loss: after the first epoch every epoch is
    # "no improvement", and patience=0 halves the rate)
    assert [r["lr"] for r in ref_hist] == pytest.approx([cfg["lr"], cfg["lr"], cfg["lr"] / 2])


def test_step_checkpoints_hold_the_position_inside_the_epoch(tiny_cfg, tmp_path, one_thread):
    cfg = tiny_cfg("epochs=1", "data.limit=200", "batch_size=32", "checkpoint_every_steps=2", "threads=1")
    t = build_trainer(cfg, out_dir=tmp_path, progress=False)
    t.keep_checkpoints = 100
    t.fit()
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    steps = t.updates_per_epoch()
    assert names == [f"epoch-0000-step-{s:06d}" for s in range(2, steps + 1, 2)] + ["epoch-0001"]
    state = ckpt.load_state(tmp_path / "checkpoints" / names[0] / "state.pt")
    assert state["epoch"] == 0 and state["step_in_epoch"] == 2 and state["global_step"] == 2
    assert set(state["callbacks"]) >= {"schedule", "grad_norm"} and state["epoch_rng"] is not None
    # every T seconds: T tiny -> a checkpoint after every step
    t2 = build_trainer(tiny_cfg("epochs=1", "data.limit=200", "batch_size=32", "checkpoint_every_seconds=1e-9"),
                       out_dir=tmp_path / "s", progress=False)
    t2.keep_checkpoints = 100
    t2.fit()
    assert len(ckpt.list_checkpoints(tmp_path / "s" / "checkpoints")) == t2.updates_per_epoch() + 1


class PoisonAfterTraining(Callback):
    """After the training part of epoch ``epoch``, make the evaluated model produce NaN (or raise as a module
    with finiteness checks does), so that the evaluation -- not the training -- meets the non-finite values."""

    def __init__(self, epoch, raise_error=False):
        self.epoch, self.raise_error = epoch, raise_error

    def on_train_epoch_end(self, trainer, record):
        if trainer.epoch + 1 == self.epoch and not self.raise_error:
            with torch.no_grad():
                next(trainer.eval_model.parameters()).fill_(float("inf"))

    def on_eval_outputs(self, trainer, inputs, outputs):
        if self.raise_error and trainer.epoch + 1 == self.epoch:
            from traintricks.errors import NonFiniteInputError
            raise NonFiniteInputError("BatchNorm2d: non-finite values (NaN or Inf) in the input")
        return None


@pytest.mark.parametrize("raise_error", [False, True])
def test_nan_in_evaluation_ends_the_run_as_diverged(tiny_cfg, tmp_path, raise_error):
    # before: an evaluation's NaN loss was recorded as a number and the run went on, and a NonFiniteInputError
    # raised in an evaluation's forward pass (lr=1000 on digits) ended the run in a raw traceback, no summary.json
    out = tmp_path / "r"
    with pytest.raises(NonFiniteLossError, match="in the val evaluation after epoch 2"):
        run(tiny_cfg("epochs=3"), out, progress=False, callbacks=[PoisonAfterTraining(2, raise_error)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs"] == 1
    assert summary["last_checkpoint"].endswith("epoch-0001")
    assert [p.name for p in ckpt.list_checkpoints(out / "checkpoints")] == ["epoch-0001"]   # the last good one


def test_the_machine_choices_are_written_into_config_toml_so_a_resumed_run_keeps_them(tmp_path, monkeypatch):
    # the probe (training/probe.py) decides "auto" by timing: a resumed run must not decide again
    import json
    from traintricks.config import load_config
    from traintricks.training import run
    monkeypatch.setenv("TRAINTRICKS_PROBE", "off")          # the static rules: no timing in a test
    cfg = load_config(None, ["data.name=digits", "epochs=1", "callbacks=[]", "data.augment=[]",
                             "model.widths=[4, 8]", "model.blocks=[1, 1]", "precision=fp32"])
    for key in ("channels_last", "compile", "threads"):
        assert cfg[key] == "auto"
    run(cfg, tmp_path / "r", progress=False)
    written = load_config(tmp_path / "r" / "config.toml")
    probe = json.loads((tmp_path / "r" / "summary.json").read_text())["probe"]
    assert written["precision"] == "fp32"
    for key in ("channels_last", "compile", "threads"):
        assert written[key] != "auto" and written[key] == probe[key]
