"""Image folders streamed from disk (traintricks/data/streaming.py): the same batches as the in-memory path with 0 and
2 workers, auto mode's threshold, training and exact resume through the recipe, bad files while streaming."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from traintricks.config import ConfigError, load_config
from traintricks.data import DataError, load_data
from traintricks.data.augment import AlternatingFlip, Compose, RandomCrop, RandomFlip
from traintricks.data.streaming import STATS_SAMPLE, StreamedSplits, StreamLoader, split_loader
from traintricks.training import build_trainer, run
from traintricks.training import checkpoint as ckpt


def _images(root, per_class=12, size=(8, 8), mode="RGB", classes=("cat", "dog", "fox"), split="train", seed=0):
    """PNGs written with Pillow; class i's pixels around 50 + 70 i."""
    rng = np.random.default_rng(seed)
    for i, c in enumerate(classes):
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            a = np.clip(rng.normal(50 + 70 * i, 25, size=shape), 0, 255).astype(np.uint8)
            Image.fromarray(a, mode).save(d / f"{j:03d}.png")


def _config(root, **data):
    return load_config(overrides=[
        "model.name=mlp", "callbacks=[]", 'data.augment=["flip"]', "data.augment_from_epoch=0", "epochs=2",
        "precision=fp32", "channels_last=false", "batch_size=8", "threads=1", "data.val_size=0.15",
        "data.name=folder", f"data.root={root}", "optim.name=adam", "lr=0.003", "schedule.name=constant",
        *[f"data.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in data.items()]])


def test_streamed_batches_equal_the_in_memory_ones_with_0_and_2_workers(tmp_path):
    _images(tmp_path, mode="RGB")
    mem = load_data("folder", root=str(tmp_path), val_size=0.15, seed=3)
    st = load_data("folder", root=str(tmp_path), val_size=0.15, seed=3, stream=True, workers=0)
    assert isinstance(st, StreamedSplits) and st.input_shape == mem.input_shape == (3, 8, 8)
    assert st.class_names == mem.class_names and st.stats_sample == len(mem.train_y) <= STATS_SAMPLE
    # a sample holding every training image: the same statistics as the in-memory path's
    torch.testing.assert_close(torch.tensor(st.mean), torch.tensor(mem.mean))
    torch.testing.assert_close(torch.tensor(st.std), torch.tensor(mem.std))
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(st, f"{split}_y"), getattr(mem, f"{split}_y")), split
    # the alternating flip checks that the streamed batches carry their dataset indices
    aug = Compose([RandomCrop(padding=2), RandomFlip(), AlternatingFlip()])
    for workers in (0, 2):
        st.workers = workers
        for epoch in (0, 1):
            a = split_loader(mem, "train", 5, shuffle=True, seed=7, transform=aug, drop_last=True)
            b = split_loader(st, "train", 5, shuffle=True, seed=7, transform=aug, drop_last=True)
            assert isinstance(b, StreamLoader) and b.workers == workers
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            pairs = list(zip(a, b, strict=True))
            assert len(pairs) == len(a) == len(b) > 1
            for (xa, ya), (xb, yb) in pairs:
                torch.testing.assert_close(xb, xa)
                assert torch.equal(ya, yb)
    torch.testing.assert_close(st.test_x, mem.test_x)                   # decoded on first use (the report)
    with pytest.raises(DataError, match="streamed from disk.*data.stream = false"):
        st.train_x


def test_streamed_shards_and_sample_statistics(tmp_path, monkeypatch):
    _images(tmp_path, per_class=10, mode="L")
    mem = load_data("folder", root=str(tmp_path), val_size=0)
    import traintricks.data.streaming as streaming
    monkeypatch.setattr(streaming, "STATS_SAMPLE", 8)                   # a seeded sample of 8 of the 24 images
    st = load_data("folder", root=str(tmp_path), val_size=0, stream=True, workers=0)
    assert st.input_shape == (1, 8, 8) and st.stats_sample == 8
    again = load_data("folder", root=str(tmp_path), val_size=0, stream=True, workers=0)
    assert st.mean == again.mean and st.std == again.std                # seeded: the same at every load (resume)
    assert abs(st.mean[0] - mem.mean[0]) < 0.5 * mem.std[0] and st.mean != mem.mean
    for rank in (0, 1):                                                  # a rank's share of each global batch
        a = split_loader(mem, "train", 4, shuffle=True, seed=1, rank=rank, world_size=2)
        b = split_loader(st, "train", 4, shuffle=True, seed=1, rank=rank, world_size=2)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb)
            torch.testing.assert_close(xb * torch.tensor(st.std) + torch.tensor(st.mean),
                                       xa * torch.tensor(mem.std) + torch.tensor(mem.mean), atol=1e-3, rtol=0)


def test_auto_streams_above_the_memory_threshold(tmp_path):
    _images(tmp_path, per_class=4, mode="L")                              # 12 images of 8x8: 3 KiB as float32
    assert not getattr(load_data("folder", root=str(tmp_path), val_size=0), "streamed")
    cache = tmp_path / ".traintricks-cache.pt"
    assert cache.is_file()
    # max_memory_mb=0: every set is too large; the valid cache is not used either
    assert load_data("folder", root=str(tmp_path), val_size=0, max_memory_mb=0, workers=0).streamed
    cache.unlink()
    assert load_data("folder", root=str(tmp_path), val_size=0, max_memory_mb=0, workers=0).streamed
    assert not cache.exists()                                            # streaming writes no decoded cache
    assert not load_data("folder", root=str(tmp_path), val_size=0, stream=False, max_memory_mb=0).streamed
    with pytest.raises(ValueError, match="workers: dataset 'digits' takes no option"):
        load_data("digits", workers=2)
    with pytest.raises(ConfigError, match="data.stream"):
        load_config(overrides=["data.stream=sometimes"])
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(overrides=["data.workers=-2"])


def _fit_batches(cfg):
    """The training batches of one epoch of a recipe-built trainer, and the trainer."""
    tr = build_trainer(cfg, progress=False)
    tr.train_loader.set_epoch(0)
    return list(tr.train_loader), tr


def test_recipe_trains_streamed_with_0_and_2_workers_and_resumes_exactly(tmp_path):
    _images(tmp_path / "data", per_class=10, mode="RGB")
    _images(tmp_path / "data", per_class=3, mode="RGB", split="test", seed=1)
    (b0, t0), (b2, t2) = (_fit_batches(_config(tmp_path / "data", stream=True, workers=w)) for w in (0, 2))
    assert isinstance(t0.train_loader, StreamLoader) and isinstance(t2.test_loader, StreamLoader)
    for (x0, y0), (x2, y2) in zip(b0, b2, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    out = tmp_path / "run"
    cfg = _config(tmp_path / "data", stream=True, workers=2)
    full = run(cfg, out, progress=False)
    assert full["epochs"] == 2 and 0 <= full["test_accuracy"] <= 1
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["streamed"] and stats["input_dtype"] == "uint8" and stats["input_shape"] == [3, 8, 8]
    weights = ckpt.load_weights(out / "model.safetensors")
    shutil.rmtree(out / "checkpoints" / "epoch-0002")                      # killed in its last epoch
    for f in ("summary.json", "model.safetensors"):
        (out / f).unlink()
    resumed = run(None, out, resume=True, progress=False)
    assert resumed["test_accuracy"] == full["test_accuracy"] and resumed["test_loss"] == full["test_loss"]
    again = ckpt.load_weights(out / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # the same run in memory: the same batches, so the same weights (float rounding of the statistics aside)
    mem = run(_config(tmp_path / "data", stream=False), tmp_path / "mem", progress=False)
    assert abs(mem["test_loss"] - full["test_loss"]) < 1e-4


def test_streamed_refusals_and_bad_files(tmp_path):
    _images(tmp_path, per_class=5, mode="L")
    with pytest.raises(ConfigError, match="curriculum"):
        build_trainer(load_config(overrides=[*_cfg_args(tmp_path), "curriculum.name=linear",
                                             "curriculum.scores=s.pt"]), progress=False)
    bad = tmp_path / "train" / "dog" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")                 # a bad header: found by the scan
    with pytest.raises(DataError, match="bad.png: unreadable or corrupt image.*data.skip_bad"):
        load_data("folder", root=str(tmp_path), stream=True, workers=0)
    bad.unlink()
    good = tmp_path / "train" / "dog" / "004.png"                           # truncated after the header: in a worker
    good.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match="004.png: unreadable or corrupt image"):   # decoding the statistics' sample
        load_data("folder", root=str(tmp_path), stream=True, workers=2, val_size=0)
    st = load_data("folder", root=str(tmp_path), stream=True, workers=0, val_size=0, skip_bad=True)
    n = len(st.train_y)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*004.png"):
        seen = sum(len(y) for _, y in split_loader(st, "train", 4)) + sum(len(y) for _, y in split_loader(st, "test", 4))
    assert seen == n + len(st.test_y) - 1                                  # dropped, never given a wrong label
    Image.fromarray(np.zeros((9, 8), np.uint8), "L").save(tmp_path / "train" / "cat" / "big.png")
    with pytest.raises(DataError, match="mixed image sizes.*big.png is 8x9"):
        load_data("folder", root=str(tmp_path), stream=True, skip_bad=True)


def _cfg_args(root):
    return ["model.name=mlp", "callbacks=[]", "data.augment=[]", "epochs=1", "batch_size=4", "threads=1",
            "data.name=folder", f"data.root={root}", "data.stream=true", "data.workers=0", "data.val_size=0",
            "precision=fp32", "channels_last=false"]
