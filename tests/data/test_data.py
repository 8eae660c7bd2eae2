import gzip
import struct
from pathlib import Path

import pytest
import torch

from traintricks.data import DataError, load_data, read_idx
from traintricks.data.datasets import DEBIAN_FASHION_MNIST, fashion_mnist


def write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> Path:
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data += array.to(torch.uint8).numpy().tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_fashion_dir(d: Path, n_train=50, n_test=20, compress=True, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=g),
              "train-labels-idx1-ubyte": torch.randint(0, 10, (n_train,), generator=g),
              "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=g),
              "t10k-labels-idx1-ubyte": torch.randint(0, 10, (n_test,), generator=g)}
    for name, a in arrays.items():
        write_idx(d / (name + (".gz" if compress else "")), a, compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    a = torch.randint(0, 256, (7, 5, 3))
    assert torch.equal(read_idx(write_idx(tmp_path / "x", a, compress)), a.to(torch.uint8))


def test_truncated_idx_names_file_and_problem(tmp_path):
    p = write_idx(tmp_path / "t.idx", torch.zeros(10, 4, 4), compress=False)
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(p) in str(e.value) and "truncated" in str(e.value) and "(10, 4, 4)" in str(e.value)


def test_truncated_gzip_and_bad_magic(tmp_path):
    p = write_idx(tmp_path / "t.gz", torch.zeros(100, 28, 28))
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(p)
    q = tmp_path / "junk"
    q.write_bytes(b"PK\x03\x04 this is a zip, not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(q)
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "missing.gz")


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_user_directory(tmp_path, compress):
    arrays = make_fashion_dir(tmp_path / "fm", compress=compress)
    raw = fashion_mnist(root=str(tmp_path / "fm"))
    assert raw.train_x.shape == (50, 1, 28, 28) and raw.test_x.shape == (20, 1, 28, 28)
    assert torch.equal(raw.train_y, arrays["train-labels-idx1-ubyte"])
    assert torch.equal(raw.test_x[:, 0], arrays["t10k-images-idx3-ubyte"].to(torch.uint8))


def test_fashion_mnist_from_env_variable(tmp_path, monkeypatch):
    make_fashion_dir(tmp_path / "fashion-mnist")
    monkeypatch.setenv("TRAINTRICKS_DATA", str(tmp_path))
    assert fashion_mnist().train_x.shape[0] == 50


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        fashion_mnist(root=str(tmp_path / "empty"))
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and str(tmp_path / "empty") in str(e.value)


def test_inconsistent_label_file_is_named(tmp_path):
    make_fashion_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(49))
    with pytest.raises(DataError) as e:
        fashion_mnist(root=str(tmp_path))
    assert "train-labels-idx1-ubyte.gz" in str(e.value) and "49 labels for 50 images" in str(e.value)


def test_split_is_seeded_disjoint_and_standardized(tmp_path):
    make_fashion_dir(tmp_path, n_train=200)
    a = load_data("fashion_mnist", root=str(tmp_path), val_size=0.25, seed=1)
    b = load_data("fashion_mnist", root=str(tmp_path), val_size=0.25, seed=1)
    c = load_data("fashion_mnist", root=str(tmp_path), val_size=0.25, seed=2)
    assert len(a.train_x) == 150 and len(a.val_x) == 50 and len(a.test_x) == 20
    assert torch.equal(a.val_x, b.val_x) and not torch.equal(a.val_x, c.val_x)
    rows = {tuple(r.flatten()[:40].tolist()) for r in a.train_x}
    assert not any(tuple(r.flatten()[:40].tolist()) in rows for r in a.val_x)
    assert abs(a.train_x.mean().item()) < 1e-4 and abs(a.train_x.std().item() - 1) < 1e-3
    assert a.train_x.dtype == torch.float32 and a.input_shape == (1, 28, 28) and a.num_classes == 10


def test_limit_and_count_val_size(tmp_path):
    make_fashion_dir(tmp_path, n_train=200)
    d = load_data("fashion_mnist", root=str(tmp_path), limit=60, val_size=10)
    assert len(d.train_x) == 50 and len(d.val_x) == 10
    with pytest.raises(ValueError, match="leaves no training"):
        load_data("fashion_mnist", root=str(tmp_path), limit=10, val_size=10)


def test_small_datasets():
    d = load_data("digits", val_size=0.1)
    assert d.input_shape == (1, 8, 8) and len(d.train_x) + len(d.val_x) + len(d.test_x) == 1797
    m = load_data("mnist1d", val_size=0.1)
    assert m.input_shape == (1, 40) and len(m.test_x) == 1000 and m.num_classes == 10


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    raw = fashion_mnist()
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(raw.train_y), torch.full((10,), 6000))


def test_augmentation_can_start_at_a_later_epoch():
    from traintricks.data import RandomFlip, TensorLoader
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    y = torch.zeros(2, dtype=torch.long)
    loader = TensorLoader(x, y, 2, transform=RandomFlip(p=1.0), transform_from_epoch=2)
    for epoch, flipped in ((0, False), (1, False), (2, True), (5, True)):
        loader.set_epoch(epoch)
        xb, _ = next(iter(loader))
        assert torch.equal(xb, x.flip(-1) if flipped else x), epoch
    with pytest.raises(ValueError, match="transform_from_epoch"):
        TensorLoader(x, y, 2, transform_from_epoch=-1)
