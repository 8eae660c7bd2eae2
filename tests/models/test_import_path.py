"""model.name = "pkg.module:factory": the user's own model, imported, with its options from its signature (issue 17,
"Models"); "timm:<model>" when timm is installed. The user's module is written here, in a style unlike ours
(F.relu, a functional residual add, a factory with keyword options), and put on the path."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from traintricks.cli import main
from traintricks.config import ConfigError, load_config, with_factory_defaults
from traintricks.training import checkpoint as ckpt
from traintricks.training.recipe import build_model

REPO = Path(__file__).resolve().parents[2]
MOD = "user_zoo_i17"
USER_MODULE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class TinyResNet(nn.Module):
        """A user's tiny residual CNN."""

        def __init__(self, in_channels, num_classes, width=8, dropout=0.0):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(width)
            self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, num_classes)
            self.dropout = dropout

        def forward(self, x):
            x = F.relu(self.bn0(self.stem(x)))
            out = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(x + self.bn2(self.conv2(out)))          # the residual add, functional
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(F.dropout(x, self.dropout, self.training))


    def tiny_resnet(in_shape, num_classes, width: int = 8, dropout: float = 0.0):
        """The factory: keyword options, the data's shape and class count."""
        return TinyResNet(in_shape[0], num_classes, width=width, dropout=dropout)


    def head_only(num_classes, hidden=16):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


    def needs_depth(in_shape, num_classes, depth: int):
        return tiny_resnet(in_shape, num_classes, width=depth)


    def any_options(in_shape, num_classes, **kwargs):
        any_options.seen = kwargs
        return tiny_resnet(in_shape, num_classes)


    def not_a_model(in_shape, num_classes):
        return "a string"


    class NotAModule:
        def __init__(self, num_classes=10):
            pass


    NOT_CALLABLE = 3
''')


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    (tmp_path / f"{MOD}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MOD, raising=False)
    return tmp_path


def cfg_with(*overrides):
    return load_config(None, [*TINY, *overrides])


def test_import_path_builds_the_users_model_with_its_options(zoo):
    cfg = cfg_with(f"model.name={MOD}:tiny_resnet", "model.width=12")
    assert cfg["model"] == {"name": f"{MOD}:tiny_resnet", "width": 12}       # the cnn's options of TINY dropped
    model = build_model(cfg, (1, 8, 8), 10)
    assert type(model).__name__ == "TinyResNet" and model.stem.out_channels == 12 and model.fc.out_features == 10
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    # the schema comes from the signature: defaults filled in for `traintricks config`, annotations checked
    assert with_factory_defaults(cfg)["model"] == {"name": f"{MOD}:tiny_resnet", "width": 12, "dropout": 0.0}
    with pytest.raises(ConfigError, match="model.width"):
        cfg_with(f"model.name={MOD}:tiny_resnet", 'model.width="wide"')
    # supplied only where the signature names them: head_only takes num_classes, not in_shape
    m = build_model(cfg_with(f"model.name={MOD}:head_only", "model.hidden=5"), (1, 8, 8), 3)
    assert m[-1].out_features == 3 and m[1].out_features == 5
    # a class is a factory too (its required in_channels set in the config)
    m = build_model(cfg_with(f"model.name={MOD}:TinyResNet", "model.in_channels=1"), (1, 8, 8), 10)
    assert m.stem.in_channels == 1


def test_traintricks_config_prints_the_factorys_options(zoo, capsys):
    assert main(["config", "--set", f"model.name={MOD}:tiny_resnet"]) == 0
    out = capsys.readouterr().out
    assert f'name = "{MOD}:tiny_resnet"' in out and "width = 8" in out and "dropout = 0.0" in out


def test_factory_with_kwargs_takes_any_key(zoo):
    cfg = cfg_with(f"model.name={MOD}:any_options", "model.anything=3")
    build_model(cfg, (1, 8, 8), 10)
    assert sys.modules[MOD].any_options.seen == {"anything": 3}


@pytest.mark.parametrize("name, key, message", [
    ("no_such_module_i17:net", "model.name", "no module named 'no_such_module_i17'"),
    (f"{MOD}:missing", "model.name", "has no attribute 'missing'"),
    (f"{MOD}:NOT_CALLABLE", "model.name", "is a int, not a class or function"),
    (f"{MOD}:NotAModule", "model.name", "is not a torch.nn.Module"),
    (f"{MOD}:", "model.name", "an import path is 'pkg.module:factory'"),
    ("mymodels.TinyNet", "model.name", "or your own model as an import path 'pkg.module:factory'"),
])
def test_bad_import_paths_are_config_errors_naming_model_name(zoo, name, key, message):
    with pytest.raises(ConfigError) as e:
        cfg_with(f"model.name={name}")
    assert e.value.key == key and message in str(e.value), str(e.value)


def test_bad_options_name_their_key_before_any_work(zoo):
    with pytest.raises(ConfigError, match="unknown option") as e:
        cfg_with(f"model.name={MOD}:tiny_resnet", "model.depth=3")
    assert e.value.key == "model.depth" and "dropout, " in str(e.value)
    with pytest.raises(ConfigError, match="required") as e:
        cfg_with(f"model.name={MOD}:needs_depth")
    assert e.value.key == "model.depth"


def test_factory_not_returning_a_module_is_refused(zoo):
    cfg = cfg_with(f"model.name={MOD}:not_a_model")
    with pytest.raises(ConfigError, match="returned a str, not a torch.nn.Module") as e:
        build_model(cfg, (1, 8, 8), 10)
    assert e.value.key == "model.name"


def test_module_failing_at_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_zoo_i17.py").write_text("import not_installed_dep_i17\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="a dependency of that module is missing") as e:
        cfg_with("model.name=broken_zoo_i17:net")
    assert e.value.key == "model.name" and "not_installed_dep_i17" in str(e.value)


def test_timm_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)         # import timm fails, as where it is not installed
    with pytest.raises(ConfigError, match="pip install timm") as e:
        cfg_with("model.name=timm:resnet18")
    assert e.value.key == "model.name" and "--no-deps" in str(e.value)


def test_timm_branch_passes_classes_and_channels(monkeypatch, zoo):
    calls = []
    user = importlib.import_module(MOD)
    fake = types.ModuleType("timm")
    fake.is_model = lambda name: name == "resnet18"

    def create_model(name, num_classes, in_chans, **kw):
        calls.append((name, num_classes, in_chans, kw))
        return user.TinyResNet(in_chans, num_classes)
    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    cfg = cfg_with("model.name=timm:resnet18", "model.drop_rate=0.1")
    build_model(cfg, (1, 8, 8), 10)
    assert calls[0] == ("resnet18", 10, 1, {"drop_rate": 0.1})
    with pytest.raises(ConfigError, match="timm has no model 'resnet9000'"):
        cfg_with("model.name=timm:resnet9000")


def _cli(*args, cwd):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(cwd), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "traintricks", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_cli_train_resume_report_and_compare_an_imported_model(zoo, monkeypatch):
    sets = [a for kv in [*TINY, "data.limit=600", f"model.name={MOD}:tiny_resnet"] for a in ("--set", kv)]
    run = zoo / "run"
    r = _cli("train", *sets, "--out", str(run), "--no-progress", cwd=zoo)
    assert r.returncode == 0, r.stderr
    written = (run / "config.toml").read_text()
    assert f'name = "{MOD}:tiny_resnet"' in written
    # killed during epoch 2: its checkpoint, final weights and summary never written; resumed from epoch 1's
    shutil.rmtree(run / "checkpoints" / "epoch-0002")
    for f in ("summary.json", "model.safetensors"):
        (run / f).unlink()
    r = _cli("train", "--resume", str(run), "--no-progress", cwd=zoo)
    assert r.returncode == 0, r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # report and compare in this process (each new process costs seconds of imports); compare's runs are
    # processes, given the user's directory through PYTHONPATH
    assert main(["report", str(run)]) == 0          # rebuilds the model from config.toml through build_model
    assert (run / "report.html").is_file() and (run / "report.json").is_file()
    # the ablation over a factory option; its width=8 seed-0 variant is the same run, uninterrupted
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(zoo), str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["compare", *sets, "--vary", "model.width=8,12", "--seeds", "1", "--out", str(zoo / "cmp")]) == 0
    result = json.loads((zoo / "cmp" / "compare.json").read_text())
    assert [(v["values"], v["finished"]) for v in result["variants"]] == \
        [({"model.width": "8"}, 1), ({"model.width": "12"}, 1)], result["variants"]
    ref = Path(next(r["dir"] for r in result["runs"] if r["values"] == {"model.width": "8"}))
    written = load_config(ref / "config.toml")["model"]          # every option recorded (the factory's defaults too)
    assert written["name"] == f"{MOD}:tiny_resnet" and written["width"] == 8
    wa, wb = ckpt.load_weights(ref / "model.safetensors"), ckpt.load_weights(run / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)      # resume was exact
    assert json.loads((ref / "summary.json").read_text())["test_accuracy"] == \
        json.loads((run / "summary.json").read_text())["test_accuracy"]


def test_cli_finds_a_module_in_the_current_directory(tmp_path, monkeypatch, capsys):
    # the `traintricks` console script, unlike `python -m`, has no current directory on sys.path: main() adds it
    (tmp_path / "cwd_zoo_i17.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_zoo_i17", raising=False)
    assert main(["config", "--set", "model.name=cwd_zoo_i17:tiny_resnet"]) == 0
    assert "width = 8" in capsys.readouterr().out


def test_a_model_with_the_wrong_output_width_is_refused_before_training(tmp_path, monkeypatch):
    # a factory naming its class count otherwise than num_classes keeps its own default (10 outputs for the 3
    # classes here): refused naming the model, not trained to a wrong target range
    (tmp_path / "wrongwidth.py").write_text(
        "import torch\n"
        "def factory(in_shape=(64,), n_classes=10):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from traintricks.config import ConfigError
    from traintricks.training.recipe import build_model
    cfg = load_config(overrides=["model.name=wrongwidth:factory"])
    with pytest.raises(ConfigError, match="10 outputs per example.*3 classes"):
        build_model(cfg, (64,), 3)
    cfg = load_config(overrides=["model.name=wrongwidth:factory", "model.n_classes=3"])
    assert build_model(cfg, (64,), 3)[-1].out_features == 3
