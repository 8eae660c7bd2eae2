"""The model table's surgery keys on any model, built-in or imported (issue 17): ``model.norm`` (and
``norm_groups``), ``model.regularization``, ``model.checkpoint`` / ``checkpoint_budget_mb``, ``model.fold_for_eval``.
The user's model is imported by path (``tests.surgery.user_models:resnet_tiny``, a torchvision-style ResNet
written with ``F.relu`` and ``out += identity``)."""
import numpy as np
import pytest
import torch
from torch import nn

from traintricks.config import ConfigError, load_config
from traintricks.training import build_trainer, run
from traintricks.training.callbacks import FoldForEval
from traintricks.training.recipe import build_model

from ..conftest import PRECISION

USER = "tests.surgery.user_models:resnet_tiny"


@pytest.fixture
def rgb_npz(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(96, 3, 16, 16)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > 0).astype(np.int64) + 2 * (x[:, 1].mean((1, 2)) > 0)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return str(tmp_path / "d.npz")


def _cfg(npz, *overrides):
    return load_config(None, ["data.name=arrays", f"data.root={npz}", "data.val_size=0.25", "data.augment=[]",
                              f"model.name={USER}", "epochs=1", "batch_size=16", "lr=0.05", f"precision={PRECISION}",
                              "channels_last=false", "callbacks=[]", "schedule.name=constant", "test_every_epoch=false",
                              *overrides])


def _types(model):
    return {type(m).__name__ for m in model.modules()}


def test_norm_converts_an_imported_models_norms(rgb_npz):
    cfg = _cfg(rgb_npz, "model.norm=groupnorm", "model.norm_groups=4")
    model = build_model(cfg, (3, 16, 16), 4)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(gns) == 1 + 8 * 2 + 3 and all(m.num_groups == 4 for m in gns)   # stem, 2 per block, 3 downsamples
    none = build_model(_cfg(rgb_npz, "model.norm=none"), (3, 16, 16), 4)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in none.modules())


def test_norm_still_goes_to_a_factory_that_takes_it(tiny_cfg):
    cfg = tiny_cfg("model.norm=groupnorm", "model.norm_groups=4")
    model = build_model(cfg, (1, 8, 8), 10)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == 4 for m in gns)


def test_regularization_on_an_imported_resnet_keeps_its_state_dict_keys(rgb_npz):
    plain = build_model(_cfg(rgb_npz), (3, 16, 16), 4)
    reg = build_model(_cfg(rgb_npz, 'model.regularization=[{name="stochastic_depth", survival=0.5, form=\"inverted\"}]'), (3, 16, 16), 4)
    assert set(plain.state_dict()) == set(reg.state_dict())
    reg.load_state_dict(plain.state_dict())
    reg.eval(), plain.eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(reg(x), plain(x))                 # inverted stochastic depth: identity in eval


def test_checkpoint_by_selector_and_by_budget_give_the_same_gradients(rgb_npz):
    torch.manual_seed(0)
    plain = build_model(_cfg(rgb_npz), (3, 16, 16), 4).double()
    for key in ("model.checkpoint=type:BasicBlock", "model.checkpoint_budget_mb=0.2"):
        ck = build_model(_cfg(rgb_npz, key), (3, 16, 16), 4).double()
        ck.load_state_dict(plain.state_dict())
        x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
        gp = torch.autograd.grad(plain(x).square().sum(), list(plain.parameters()))
        gc = torch.autograd.grad(ck(x).square().sum(), list(ck.parameters()))
        for a, b in zip(gp, gc):
            torch.testing.assert_close(a, b)
        assert any("Checkpointed" in t for t in _types(ck)), key


def test_a_run_with_the_keys_trains_resumes_and_evaluates_folded(rgb_npz, tmp_path):
    keys = ["model.norm=batchrenorm", 'model.regularization=[{name="stochastic_depth", survival=0.8}]',
            "model.checkpoint=type:BasicBlock", "model.fold_for_eval=true", "epochs=2"]
    cfg = _cfg(rgb_npz, *keys)
    trainer = build_trainer(cfg, out_dir=tmp_path / "a0")
    assert any(isinstance(c, FoldForEval) for c in trainer.callbacks)
    s = run(cfg, tmp_path / "a", progress=False)
    assert np.isfinite(s["test_loss"])
    # the same evaluation without folding: equal metrics (the fold is exact)
    unfolded = run(_cfg(rgb_npz, *keys[:-2], "epochs=2"), tmp_path / "b", progress=False)
    assert s["test_loss"] == pytest.approx(unfolded["test_loss"], rel=1e-4)
    assert s["test_accuracy"] == unfolded["test_accuracy"]
    # the written config holds the keys, and resuming the finished run changes nothing
    again = load_config(tmp_path / "a" / "config.toml")
    assert again["model"]["norm"] == "batchrenorm" and again["model"]["fold_for_eval"] is True
    resumed = run(None, tmp_path / "a", resume=True, progress=False)
    assert resumed["test_loss"] == pytest.approx(s["test_loss"], rel=1e-6)


@pytest.mark.parametrize("key, match", [
    ("model.norm=bogus", "model.norm"),
    ("model.checkpoint=nothing_here*", "model.checkpoint"),
    ("model.norm_groups=4", "model.norm_groups"),
])
def test_bad_surgery_keys_name_the_key(rgb_npz, key, match):
    with pytest.raises(ConfigError, match=match):
        build_model(_cfg(rgb_npz, key), (3, 16, 16), 4)


def test_fold_for_eval_without_batch_norm_warns_naming_the_key_and_evaluates_unfolded(rgb_npz, tmp_path):
    # a compare --vary model.norm=batchnorm,groupnorm with folding on: the groupnorm variants still run
    with pytest.warns(UserWarning, match="model.fold_for_eval.*evaluating the model unfolded"):
        t = build_trainer(_cfg(rgb_npz, "model.norm=groupnorm", "model.fold_for_eval=true"), out_dir=tmp_path / "r")
    assert not any(isinstance(c, FoldForEval) for c in t.callbacks)


def test_a_factory_failing_on_an_option_value_names_the_call_and_the_exception(tmp_path, monkeypatch, rgb_npz):
    (tmp_path / "fails_i17.py").write_text(
        "import torch\n"
        "def net(in_shape, num_classes, width=16):\n"
        "    label = 'w%d' % width\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"config key 'model': 'fails_i17:net'\(width='eight'\) raised TypeError"):
        build_model(_cfg(rgb_npz, "model.name=fails_i17:net", "model.width=eight"), (3, 16, 16), 4)
