"""The machine probe (traintricks/training/probe.py): what it returns, that it is fast, cached and skippable, and
that a config's "auto" settings reach the Trainer through it. Which candidate wins depends on the machine, so no
test asserts a choice made by timing."""
import time

import pytest
import torch

from tests.conftest import PRECISION
from traintricks.models.cnn import SmallCNN
from traintricks.training import build_trainer
from traintricks.training import probe as probe_module
from traintricks.training.probe import probe


@pytest.fixture
def probing(monkeypatch):
    monkeypatch.setenv("TRAINTRICKS_PROBE", "on")
    monkeypatch.setattr(probe_module, "_CACHE", {})
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _model():
    torch.manual_seed(0)
    return SmallCNN((1, 28, 28), 10, widths=(16, 32, 64), blocks=(1, 2, 2), pool_before_norm=True)


def test_probe_chooses_every_auto_key_in_under_a_second(probing):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    t0 = time.perf_counter()
    r = probe(model, (1, 28, 28), 10, "cpu", precision="auto", channels_last="auto", compile="auto", threads="auto")
    assert time.perf_counter() - t0 < 1.0 + 1.0          # the probe's budget, plus slack for a loaded machine
    assert r["source"] == "probe" and r["seconds"] < 2.0
    assert r["precision"] in ("fp32", "bf16") and isinstance(r["channels_last"], bool)
    assert r["compile"] is False                          # never on CPU: compilation is not weighed by the probe
    assert r["threads"] >= 1 and torch.get_num_threads() == r["threads"]
    assert "fp32" in r["timings_ms"] and "fp32/channels_last" in r["timings_ms"]
    if not probe_module.bf16_capable(torch.device("cpu")):
        assert r["precision"] == "fp32" and "bf16" not in r["timings_ms"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))   # a copy is timed


def test_probe_is_cached_and_leaves_fixed_settings_alone(probing):
    model = _model()
    r1 = probe(model, (1, 28, 28), 10, precision="auto", channels_last="auto", threads=0, compile=False)
    r2 = probe(model, (1, 28, 28), 10, precision="auto", channels_last="auto", threads=0, compile=False)
    assert r2["source"] == "cache" and {k: r2[k] for k in ("precision", "channels_last")} == \
        {k: r1[k] for k in ("precision", "channels_last")}
    fixed = probe(model, (1, 28, 28), 10, precision="fp32", channels_last=False, compile=False, threads=0)
    assert fixed["source"] == "fixed" and fixed["timings_ms"] == {}
    assert (fixed["precision"], fixed["channels_last"], fixed["compile"], fixed["threads"]) == ("fp32", False, False, 0)
    # channels-last is never chosen for inputs that are not images
    flat = probe(torch.nn.Linear(8, 3), (8,), 3, precision="fp32", channels_last="auto", threads=0, compile=False)
    assert flat["channels_last"] is False and "fp32/channels_last" not in flat["timings_ms"]


def test_probe_off_applies_the_static_rules(monkeypatch):
    monkeypatch.setenv("TRAINTRICKS_PROBE", "off")
    r = probe(_model(), (1, 28, 28), 10, precision="auto", channels_last="auto", compile="auto", threads="auto")
    assert r["source"] == "off" and r["timings_ms"] == {}
    assert (r["precision"], r["channels_last"], r["compile"], r["threads"]) == ("auto", True, False, 0)


@pytest.mark.parametrize("kw", [{"precision": "fp8"}, {"channels_last": "yes"}, {"compile": 1}, {"threads": -1},
                                {"threads": "many"}])
def test_probe_rejects_bad_values(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        probe(_model(), (1, 28, 28), 10, **kw)


def test_config_auto_reaches_the_trainer_through_the_probe(tiny_cfg, probing):
    trainer = build_trainer(tiny_cfg("channels_last=auto", "threads=auto", "compile=auto"), progress=False)
    assert trainer.probe["source"] == "probe" and trainer.probe["precision"] == PRECISION
    assert (trainer.memory_format is not None) == trainer.probe["channels_last"]
    assert trainer.forward is trainer.model                # not compiled on CPU


@pytest.mark.parametrize("override,key", [("channels_last=maybe", "channels_last"), ("compile=2", "compile"),
                                          ("threads=fast", "threads"), ("threads=-2", "threads")])
def test_config_rejects_bad_auto_keys(tiny_cfg, override, key):
    from traintricks.config import ConfigError
    with pytest.raises(ConfigError, match=key):
        tiny_cfg(override)


def test_probe_falls_back_to_the_static_rules_for_a_model_it_cannot_time(probing):
    class Tokens(torch.nn.Module):               # needs integer token ids: a random float batch fails
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, x):
            return self.emb(x).mean(1)
    r = probe(Tokens(), (5,), 4, precision="auto", channels_last="auto", compile="auto", threads="auto")
    assert r["source"].startswith("static (the model does not train on a random batch")
    assert (r["precision"], r["channels_last"], r["compile"], r["threads"]) == ("auto", False, False, 0)


def test_probe_falls_back_for_a_step_too_slow_to_time(probing, monkeypatch):
    monkeypatch.setattr(probe_module, "SLOW_S", 0.0)     # every step counts as too slow
    r = probe(_model(), (1, 28, 28), 10, precision="auto", channels_last="auto", compile="auto", threads="auto")
    assert r["source"].startswith("static (one step takes") and r["timings_ms"] == {}
    assert (r["precision"], r["channels_last"]) == ("auto", True)
