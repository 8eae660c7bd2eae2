"""traintricks.load_run: a finished run's model applied to raw inputs with the run's saved statistics
(data_stats.json) gives the trainer's own evaluation outputs, with no training data left on disk."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import traintricks
from traintricks.callback import Callback
from traintricks.config import load_config
from traintricks.training import checkpoint as ckpt
from traintricks.training import run

FAST = ["callbacks=[]", "data.augment=[]", "epochs=2", "precision=fp32", "channels_last=false", "batch_size=8",
        "threads=1", "data.val_size=0.1", "optim.name=adam", "lr=0.003", "schedule.name=constant"]


class Capture(Callback):
    """The evaluated model's outputs on each split, as the trainer computed them (the last evaluation's)."""

    name = "capture"

    def __init__(self):
        self.parts, self.outputs = [], {}

    def on_eval_outputs(self, trainer, inputs, outputs):
        self.parts.append(outputs.detach().clone())

    def on_evaluate(self, trainer, split, metrics):
        self.outputs[split], self.parts = torch.cat(self.parts), []


def _folder(root):
    rng = np.random.default_rng(0)
    paths = []
    for split, n in (("train", 14), ("test", 3)):
        for i, c in enumerate(("ant", "bee")):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(n):
                a = np.clip(rng.normal(60 + 120 * i, 30, (10, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a, "RGB").save(d / f"{j}.png")
                if split == "test":
                    paths.append(d / f"{j}.png")
    return paths


@pytest.mark.parametrize("stream", [False, True])
def test_folder_run_predicts_the_trainers_test_outputs_after_the_data_is_gone(tmp_path, stream):
    paths = _folder(tmp_path / "data")
    cfg = load_config(overrides=[*FAST, "model.name=mlp", "data.name=folder", f"data.root={tmp_path / 'data'}",
                                 "data.image_size=8", f"data.stream={str(stream).lower()}", "data.workers=0"])
    cap = Capture()
    run(cfg, tmp_path / "run", progress=False, callbacks=[cap])
    (tmp_path / "new").mkdir()                                            # the test images, kept elsewhere
    paths = [shutil.copy(p, tmp_path / "new" / f"{i}.png") for i, p in enumerate(paths)]
    shutil.rmtree(tmp_path / "data")
    r = traintricks.load_run(tmp_path / "run")
    assert not r.model.training and r.class_names == ["ant", "bee"] and r.task == "classification"
    assert r.input_shape == (3, 8, 8) and r.config["data"]["name"] == "folder"
    out = r.predict([str(p) for p in paths])                               # decoded and resized like training
    torch.testing.assert_close(out, cap.outputs["test"], rtol=0, atol=0 if not stream else 1e-5)
    assert r.predict(paths[0]).shape == (1, 2)
    from PIL import Image                                  # open Pillow images too (a new user tried them)
    images = [Image.open(p) for p in paths]
    torch.testing.assert_close(r.predict(images), out, rtol=0, atol=1e-5)
    torch.testing.assert_close(r.predict(images[0]), out[:1], rtol=0, atol=1e-5)
    # uint8 tensors (0..255) and float tensors (0..1) of the decoded images give the same outputs
    decoded = r.standardize([str(p) for p in paths]) * torch.tensor(r.stats["std"])[:, None, None] + \
        torch.tensor(r.stats["mean"])[:, None, None]
    u8 = decoded.round().to(torch.uint8)
    torch.testing.assert_close(r.predict(u8), out)
    torch.testing.assert_close(r.predict(u8.float() / 255), out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="float images must be in 0..1"):
        r.predict(u8.float())
    with pytest.raises(ValueError, match=r"shape \(6, 3, 8, 7\); the model takes \(N, 3, 8, 8\)"):
        r.predict(u8[..., :7])


def test_csv_regression_run_predicts_unstandardized_targets(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    y = x @ np.array([2.0, -1.0, 0.5]) * 10 + 50 + rng.normal(size=100) * 0.1
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "y"])
        w.writerows([[*map(float, r), float(v)] for r, v in zip(x, y)])
    cfg = load_config(overrides=[*FAST, "model.name=mlp", "data.name=csv", f"data.root={tmp_path / 't.csv'}",
                                 'data.target=["y"]'])
    cap = Capture()
    summary = run(cfg, tmp_path / "run", progress=False, callbacks=[cap])
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["task"] == "regression" and stats["input_shape"] == [3] and stats["input_dtype"] == "float32"
    (tmp_path / "t.csv").unlink()
    r = traintricks.load_run(tmp_path / "run")
    assert r.task == "regression" and r.class_names == ["y"]
    # the test split: the fixed 20% (permutation seeded with 0) of the rows, as the csv source takes it
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:20]
    xt = torch.tensor(x, dtype=torch.float32)[perm]
    pred = r.predict(xt)
    tm, ts = torch.tensor(stats["target_mean"]), torch.tensor(stats["target_std"])
    torch.testing.assert_close(pred, cap.outputs["test"] * ts + tm)      # un-standardized
    torch.testing.assert_close(r.predict(xt[0]), pred[:1])
    rmse = ((pred[:, 0] - torch.tensor(y, dtype=torch.float32)[perm]) ** 2).mean().sqrt()
    assert abs(float(rmse) / float(ts) - summary["test_rmse"]) < 1e-4   # the run's metric, in target units
    with pytest.raises(TypeError, match="image paths given.*not images"):
        r.predict(["a.png"])


def test_load_run_refuses_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="config.toml: not found"):
        traintricks.load_run(tmp_path)
    (tmp_path / "config.toml").write_text("")
    with pytest.raises(ckpt.CheckpointError, match="data_stats.json: not found"):
        traintricks.load_run(tmp_path)
    assert "load_run" in traintricks.__all__
