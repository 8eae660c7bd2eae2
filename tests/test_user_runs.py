"""The tools on the user's own data and model, from the command line (issue 17, "The tools on user data and
models"): ``train`` interrupted and ``--resume``d to the uninterrupted result, ``report`` (also of a run whose
data or model module moved), ``compare --vary`` of import paths, ``lr-find`` on a regression, ``lab`` claims
on a folder of images with the user's model, and every bad input of the issue refused with one line, exit 2.

The user's module is written here, as a user would write it (a plain ``nn.Module`` with ``F.relu``, options as
constructor arguments, the data's shape taken as ``in_shape``), into a temporary project directory beside the
user's data: tiny generated PNGs, a CSV and an ``.npz``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import PRECISION
from traintricks.cli import main
from traintricks.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
MOD = "usernets_i17d"
USER_MODULE = textwrap.dedent('''
    import os

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset

    # the tests interrupt a run here: Ctrl-C (KeyboardInterrupt) at the STOP_AT-th training forward pass
    STOP_AT = int(os.environ.get("USERNETS_STOP_AT", "0"))
    _steps = 0


    class Net(nn.Module):
        """A user's small CNN: a conv, two linear layers, functional ReLUs."""

        def __init__(self, in_shape, num_classes, hidden=16):
            super().__init__()
            c, h, w = in_shape
            self.conv = nn.Conv2d(c, 4, 3, padding=1)
            self.fc1 = nn.Linear(4 * h * w, hidden)
            self.fc2 = nn.Linear(hidden, num_classes)

        def forward(self, x):
            global _steps
            if self.training and STOP_AT:
                _steps += 1
                if _steps == STOP_AT:
                    raise KeyboardInterrupt
            x = F.relu(self.conv(x))
            return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


    class Net2(Net):
        """The same with another hidden width's default."""

        def __init__(self, in_shape, num_classes, hidden=8):
            super().__init__(in_shape, num_classes, hidden)


    def tab(in_shape, num_classes, hidden=16):
        """A user's MLP for tables."""
        return nn.Sequential(nn.Linear(in_shape[0], hidden), nn.Tanh(), nn.Linear(hidden, num_classes))


    def sets():
        """The user's own Datasets: (train, test)."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(60, 1, 6, 6, generator=g)
        y = (x.mean((1, 2, 3)) > 0).long()
        return TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])
''')


def _images(root, per_class=20, size=8, classes=("dark", "light")):
    """``per_class`` grey PNGs per class written with Pillow, class i's pixels around 60 + 120 i."""
    from PIL import Image
    rng = np.random.default_rng(17)
    for i, c in enumerate(classes):
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            a = np.clip(rng.normal(60 + 120 * i, 30, size=(size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(a, "L").save(d / f"{j:03d}.png")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project directory: ``usernets_i17d.py`` and ``pics/`` (40 PNGs), the working directory, on the
    path as ``python -m`` puts it; one thread (bit-identical runs in and out of this process)."""
    (tmp_path / f"{MOD}.py").write_text(USER_MODULE)
    _images(tmp_path / "pics")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MOD, raising=False)
    n = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(n)
    sys.modules.pop(MOD, None)


def _sets(*kv):
    return [a for x in kv for a in ("--set", x)]


# the user's folder and model: 32 training images (8 of the 40 are the test split), 6 for validation, batches
# of 8: 3 steps per epoch; a checkpoint at every step
FOLDER = ["data.name=folder", "data.root=pics", f"model.name={MOD}:Net", "epochs=2", "batch_size=8",
          "data.val_size=6", "callbacks=[]", "data.augment=[]", "checkpoint_every_steps=1", "threads=1",
          f"precision={PRECISION}", "channels_last=false", "schedule.name=onecycle", "lr=0.05"]


def _same_weights(a, b):
    wa, wb = ckpt.load_weights(a / "model.safetensors"), ckpt.load_weights(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_folder_and_imported_model_interrupted_after_one_epoch_resume_exactly_and_report(project, capsys):
    assert main(["train", *_sets(*FOLDER), "--out", "ref", "--no-progress"]) == 0, capsys.readouterr().err
    # the same run from the command line as a user types it (python -m: the working directory is importable),
    # interrupted (Ctrl-C) in epoch 2's second step: epoch 1 and one step of epoch 2 are checkpointed
    env = {**os.environ, "USERNETS_STOP_AT": "5", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "traintricks", "train", *_sets(*FOLDER), "--out", "run",
                        "--no-progress"], capture_output=True, text=True, timeout=300, cwd=project, env=env)
    assert r.returncode == 130, r.stderr
    assert "interrupted; continue with: traintricks train --resume run" in r.stderr
    assert not (project / "run" / "summary.json").exists()
    assert ckpt.latest_checkpoint(project / "run" / "checkpoints").name == "epoch-0001-step-000001"
    assert len((project / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["train", "--resume", "run", "--no-progress"]) == 0, capsys.readouterr().err
    ref, run = (json.loads((project / d / "summary.json").read_text()) for d in ("ref", "run"))
    assert run["test_accuracy"] == ref["test_accuracy"] and run["epochs"] == 2
    assert run["dataset"] == "folder" and run["model"] == f"{MOD}:Net"
    assert _same_weights(project / "ref", project / "run")
    # report rebuilds the user's model and data from config.toml; its accuracy is the run's
    assert main(["report", "run"]) == 0, capsys.readouterr().err
    rep = json.loads((project / "run" / "report.json").read_text())
    assert rep["class_names"] == ["dark", "light"] and rep["test_accuracy"] == pytest.approx(ref["test_accuracy"])


def test_python_factory_and_imported_model_resume_and_report(project, capsys):
    mod = __import__(MOD)
    cfg = ["data.name=python", f"data.factory={MOD}:sets", f"model.name={MOD}:Net", "model.hidden=12",
           *[kv for kv in FOLDER if not kv.startswith(("data.name", "data.root", "model.name", "data.val_size"))],
           "data.val_size=8"]
    assert main(["train", *_sets(*cfg), "--out", "ref", "--no-progress"]) == 0, capsys.readouterr().err
    mod.STOP_AT, mod._steps = 6, 0                     # 40 training examples, batches of 8: Ctrl-C in epoch 2
    assert main(["train", *_sets(*cfg), "--out", "run", "--no-progress"]) == 130
    assert "continue with: traintricks train --resume run" in capsys.readouterr().err
    mod.STOP_AT = 0
    assert main(["train", "--resume", "run", "--no-progress"]) == 0, capsys.readouterr().err
    assert _same_weights(project / "ref", project / "run")
    assert main(["report", "run"]) == 0, capsys.readouterr().err
    assert (project / "run" / "report.html").is_file()


def test_report_of_a_run_whose_data_and_model_module_moved(project, capsys, tmp_path_factory):
    short = [kv for kv in FOLDER if not kv.startswith(("epochs", "checkpoint_every"))] + ["epochs=1"]
    assert main(["train", *_sets(*short), "--out", "run", "--no-progress"]) == 0, capsys.readouterr().err
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (project / "pics").rename(elsewhere / "photos")                        # the data moved
    (project / f"{MOD}.py").rename(elsewhere / "renamed_nets_i17d.py")     # and the module was renamed
    sys.modules.pop(MOD, None)
    capsys.readouterr()
    assert main(["report", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.name" in err and f"no module named '{MOD}'" in err
    assert "--set model.name=" in err
    assert main(["train", "--resume", "run"]) == 2                          # resume says where it looks
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no module named '{MOD}'" in err and "from the directory the run was" in err
    assert main(["report", "run", "--set", f"model.name={MOD}:Net"]) == 2     # still not found: said so
    assert f"no module named '{MOD}'" in capsys.readouterr().err
    sys.path.insert(0, str(elsewhere))
    try:
        assert main(["report", "run", "--set", "model.name=renamed_nets_i17d:Net"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pics: not found" in err and "--set data.root=" in err
        assert main(["report", "run", "--set", "model.name=renamed_nets_i17d:Net",
                     "--set", f"data.root={elsewhere / 'photos'}"]) == 0, capsys.readouterr().err
    finally:
        sys.path.remove(str(elsewhere))
        sys.modules.pop("renamed_nets_i17d", None)
    assert (project / "run" / "report.html").is_file()
    assert main(["report", "run", "--set", "lr=1"]) == 2                   # only where things are, not the run
    assert "report --set takes only" in capsys.readouterr().err


def test_compare_varies_import_paths_and_shows_them_as_written(project, capsys, monkeypatch):
    from traintricks.evaluation.compare import variant_dirs
    assert variant_dirs([{"a": "x:y"}, {"a": "x_y"}, {"a": "x?y"}]) == ["a=x_y", "a=x_y-2", "a=x_y-3"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    base = [kv for kv in FOLDER if not kv.startswith(("model.name", "epochs", "checkpoint_every"))] + ["epochs=1"]
    code = main(["compare", *_sets(*base), "--vary", f"model.name={MOD}:Net,{MOD}:Net2", "--jobs", "2",
                 "--out", "cmp"])
    assert code == 0, capsys.readouterr().err
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["variant"] for p in printed] == [f"model.name={MOD}:Net", f"model.name={MOD}:Net2"]
    result = json.loads((project / "cmp" / "compare.json").read_text())
    assert [v["finished"] for v in result["variants"]] == [1, 1]
    assert len({r["dir"] for r in result["runs"]}) == 2
    html = (project / "cmp" / "report.html").read_text()
    assert f"model.name={MOD}:Net2" in html
    net2 = json.loads((Path(result["runs"][1]["dir"]) / "summary.json").read_text())
    assert net2["model"] == f"{MOD}:Net2"


def test_lr_find_on_a_regression_with_the_users_model(project, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    np.savez(project / "reg.npz", x=x, y=(x @ np.arange(1, 5)).astype(np.float32))
    code = main(["lr-find", *_sets("data.name=arrays", "data.root=reg.npz", f"model.name={MOD}:tab", "threads=1",
                                   "data.augment=[]", "callbacks=[]", f"precision={PRECISION}"),
                 "--steps", "12", "--out", "lr"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((project / "lr" / "lr_find.json").read_text())
    assert res["suggestion"] > 0 and len(res["loss"]) >= 3
    # the loss the range test stepped is the regression's (MSE of standardized targets: about 1 at the start)
    assert 0.2 < res["loss"][0] < 10


def test_lab_claims_on_a_folder_with_the_users_model(project, capsys):
    # the lab sets precision itself (each claim runs under fp32 and bf16), never the machine's "auto"
    user = _sets("data.name=folder", "data.root=pics", f"model.name={MOD}:Net", "model.hidden=8")
    code = main(["lab", "onecycle", "gn_train_eval", "checkpointing", "--quick", "--out", "lab", *user])
    captured = capsys.readouterr()
    assert code == 2                       # gn_train_eval could not run (the model has no norm to vary); the others did
    v = json.loads((project / "lab" / "onecycle.json").read_text())
    assert v["dataset"] == "folder" and f"model.name={MOD}:Net" in v["sets"] and "onecycle: " in captured.out
    assert "gn_train_eval: config key 'model.norm': convert_norms: found no normalization layers" in captured.err
    assert "checkpointing: runs without" in captured.err and "synthetic" in captured.err
    assert json.loads((project / "lab" / "checkpointing.json").read_text())["sets"] == []
    # a claim judged on accuracy refuses a regression; the lab CNN refuses a table; other keys are not the lab's
    rng = np.random.default_rng(0)
    np.savez(project / "reg.npz", x=rng.normal(size=(50, 3)).astype(np.float32),
             y=rng.normal(size=50).astype(np.float32))
    assert main(["lab", "onecycle", "--quick", "--out", "lab2", *_sets("data.name=arrays", "data.root=reg.npz",
                                                                       f"model.name={MOD}:tab")]) == 2
    assert "judged on classification" in capsys.readouterr().err
    np.savez(project / "cls.npz", x=rng.normal(size=(50, 3)).astype(np.float32), y=np.arange(50) % 2)
    assert main(["lab", "onecycle", "--quick", "--out", "lab3", *_sets("data.name=arrays", "data.root=cls.npz")]) == 2
    assert "lab's CNN, which takes images" in capsys.readouterr().err
    assert main(["lab", "onecycle", "--set", "lr=3"]) == 2
    assert "lab --set takes data.* and model.* keys" in capsys.readouterr().err


# ------------------------------------------------------------------- docs/examples/ablation_folder.md
EXAMPLES = REPO / "examples"


def test_ablation_folder_example_model_trains_and_reports_today(project, capsys, monkeypatch):
    # the example's user model (a torchvision-style ResNet: F.relu, out += identity) on the folder, by import path
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "user_resnet", raising=False)
    kv = [x for x in FOLDER if not x.startswith(("model.name", "epochs", "checkpoint_every"))]
    assert main(["train", *_sets(*kv, "model.name=user_resnet:resnet", "model.width=4", "model.blocks=[1, 1]",
                                 "epochs=1"), "--out", "run", "--no-progress"]) == 0, capsys.readouterr().err
    assert main(["report", "run"]) == 0, capsys.readouterr().err


def test_ablation_folder_example(project):
    """examples/ablation_folder.sh as documented (1 epoch, 1 seed, 8 x 8 images): norm x stochastic depth on the
    user's ResNet (model.norm and model.regularization applied to an imported model by traintricks.surgery)."""
    env = {**os.environ, "TRAINTRICKS": f"{sys.executable} -m traintricks", "EPOCHS": "1", "SEEDS": "1",
           "JOBS": "2", "IMAGE_SIZE": "8", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(["bash", str(EXAMPLES / "ablation_folder.sh"), "pics", "abl"], capture_output=True,
                       text=True, timeout=600, cwd=project, env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads((project / "abl" / "compare.json").read_text())
    assert len(result["variants"]) == 6 and all(v["finished"] == 1 for v in result["variants"]), result["variants"]


# ------------------------------------------------------------------------------------------- bad inputs
def _bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input of the issue: its ``--set``s and what the one-line error must say (file and key)."""
    from PIL import Image
    (root / "empty" / "train" / "a").mkdir(parents=True)
    (root / "empty" / "train" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(root / "empty" / "train" / "a" / "0.png")
    for c, size in (("a", (8, 8)), ("b", (9, 8))):
        (root / "mixed" / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros(size, np.uint8), "L").save(root / "mixed" / "train" / c / "0.png")
    for c in ("a", "b"):
        (root / "corrupt" / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(root / "corrupt" / "train" / c / "0.png")
    (root / "corrupt" / "train" / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "text.csv").write_text("a,b,label\n1,2,x\n3,hello,y\n")
    return {
        "missing folder": (["data.name=folder", "data.root=nowhere"], r"nowhere: not found \(data.root"),
        "empty class": (["data.name=folder", "data.root=bad/empty"], "bad/empty/train/b: empty class"),
        "mixed sizes": (["data.name=folder", "data.root=bad/mixed"], "mixed image sizes.*mixed/train/b/0.png is 8x9.*"
                                                                 "data.image_size"),
        "corrupt png": (["data.name=folder", "data.root=bad/corrupt"], "corrupt/train/b/bad.png: unreadable or corrupt"
                                                                   ".*data.skip_bad"),
        "csv text column": (["data.name=csv", "data.root=bad/text.csv", "data.target=label"],
                            "text.csv: non-numeric column 'b': row 2 .*'hello'"),
        "factory no attribute": (["data.name=python", f"data.factory={MOD}:nope"],
                                 f"'data.factory'.*{MOD}.*no attribute 'nope'"),
        "factory no module": (["data.name=python", "data.factory=nopkg_i17.mod:f"],
                              "'data.factory'.*nopkg_i17.mod' not found"),
        "model no attribute": ([f"model.name={MOD}:nope"], f"'model.name'.*{MOD}.py\\) has no attribute 'nope'"),
        "model no module": (["model.name=nopkg_i17.mod:f"], "'model.name'.*no module named 'nopkg_i17.mod'"),
    }


@pytest.mark.parametrize("command", ["train", "lr-find", "compare"])
def test_every_bad_input_is_one_line_naming_file_and_key_exit_2(project, capsys, command):
    import re
    extra = {"train": ["--out", "never"], "lr-find": ["--out", "never"],
             "compare": ["--vary", "seed=1,2", "--out", "never"]}[command]
    for what, (kv, message) in _bad_inputs(project / "bad").items():
        code = main([command, *_sets(*kv), *extra])
        err = capsys.readouterr().err
        assert code == 2, (what, err)
        assert err.startswith("traintricks: error: ") and err.count("\n") == 1, (what, err)
        assert re.search(message, err), (what, err)
        assert not (project / "never").exists(), what
