"""precision = "fp16": float16 autocast with dynamic loss scaling (torch.amp.GradScaler), on CPU here (the CUDA
path is the same code with device "cuda"; not run here: no GPU)."""
import pytest
import torch
from torch import nn

from traintricks.callback import Callback
from traintricks.config import ConfigError, load_config
from traintricks.training import Trainer, build_trainer
from traintricks.training.trainer import resolve_precision


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


class SeeGrads(Callback):
    """Records the gradients the transforms see (before the optimizer step) and the parameters after it."""

    def __init__(self):
        self.grads, self.after = [], []

    def on_before_optimizer_step(self, trainer, params):
        self.grads.append([p.grad.clone() for p in params])

    def on_after_optimizer_step(self, trainer):
        self.after.append([p.detach().clone() for p in trainer.model.parameters()])


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def test_fp16_transforms_see_unscaled_gradients_and_the_step_is_the_unscaled_one():
    model = _net()
    batches = _data()
    see = SeeGrads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t = Trainer(model, opt, nn.functional.cross_entropy, batches[:1], epochs=1, precision="fp16", progress=False,
                callbacks=[see])
    assert t.scaler is not None and t.scaler.get_scale() == 65536.0
    before = [p.detach().clone() for p in model.parameters()]
    rec = t.fit()
    # the same gradients computed by hand under float16 autocast without any scaling
    ref = _net()
    x, y = batches[0]
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for seen, g in zip(see.grads[0], grads):
        torch.testing.assert_close(seen, g, rtol=2e-3, atol=1e-4)        # fp16 rounding of the scaled backward
        assert seen.abs().max() < 100                                     # not multiplied by 65536
    for w0, w1, g in zip(before, see.after[0], see.grads[0]):
        torch.testing.assert_close(w1, w0 - 0.1 * g)
    assert t.history[0]["skipped_steps"] == 0 and t.history[0]["loss_scale"] == 65536.0
    assert rec["precision"] == "fp16"


class Poison(Callback):
    """An Inf gradient in the second step of each epoch (what an fp16 overflow gives)."""

    def on_after_backward(self, trainer):
        if trainer.step_in_epoch == 1:
            next(trainer.model.parameters()).grad[0, 0] = float("inf")


def test_fp16_an_overflowing_step_is_skipped_counted_and_halves_the_scale():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    see = SeeGrads()
    t = Trainer(model, opt, nn.functional.cross_entropy, _data(), epochs=1, precision="fp16", progress=False,
                callbacks=[Poison(), see])
    t.fit()
    assert t.history[0]["skipped_steps"] == 1
    assert t.history[0]["loss_scale"] == 32768.0
    for a, b in zip(see.after[0], see.after[1]):           # the weights did not move in the skipped step
        assert torch.equal(a, b)
    assert not torch.equal(see.after[1][0], see.after[2][0])


def test_fp16_scaler_state_is_checkpointed(tmp_path):
    model = _net()
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, _data(), epochs=1,
                precision="fp16", progress=False, out_dir=tmp_path, callbacks=[Poison()])
    t.fit()
    model2 = _net()
    t2 = Trainer(model2, torch.optim.SGD(model2.parameters(), lr=0.1), nn.functional.cross_entropy, _data(),
                 epochs=2, precision="fp16", progress=False, out_dir=tmp_path)
    t2.resume()
    assert t2.scaler.get_scale() == t.scaler.get_scale() == 32768.0


def test_fp16_refuses_a_closure_optimizer_and_auto_never_picks_it_on_cpu():
    from traintricks.optim import Newton
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="fp16"):
        Trainer(model, Newton(model.parameters()), nn.functional.mse_loss, [], precision="fp16", progress=False)
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, [], precision="fp8",
                progress=False)


def test_auto_on_cuda_picks_fp16_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_fp16_from_the_config_trains_a_tiny_run(tiny_cfg):
    cfg = tiny_cfg("epochs=1", "data.limit=300", "precision=fp16")
    t = build_trainer(cfg, progress=False)
    summary = t.fit()
    assert summary["precision"] == "fp16" and summary["test_accuracy"] > 0.3
    assert "skipped_steps" in t.history[0]
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, ["precision=fp8"])
