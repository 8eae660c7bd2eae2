"""cifar10 / cifar100 from the official binary release (traintricks/data/cifar.py): tiny fake files written in the
format (3,073- / 3,074-byte records), labels, pixels and channel order checked; the pickled Python release refused."""
import numpy as np
import pytest
import torch

from traintricks.config import ConfigError, load_config
from traintricks.data import DataError, load_data
from traintricks.data.datasets import DATASETS


def _records(rng, n, labels):
    """``n`` records: the label bytes (one column per entry of ``labels``: that many classes), then 3,072 pixels."""
    lab = np.stack([rng.integers(0, k, n) for k in labels], axis=1).astype(np.uint8)
    img = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return np.concatenate([lab, img.reshape(n, -1)], axis=1), lab, img


def _cifar10(d, n=(3, 2, 2, 2, 2), n_test=4, names=True):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    parts = []
    for i, k in enumerate(n, 1):
        rec, lab, img = _records(rng, k, [10])
        rec.tofile(d / f"data_batch_{i}.bin")
        parts.append((lab[:, 0], img))
    rec, lab, img = _records(rng, n_test, [10])
    rec.tofile(d / "test_batch.bin")
    if names:
        (d / "batches.meta.txt").write_text("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                       "horse", "ship", "truck"]) + "\n\n")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), lab[:, 0], img


def test_cifar10_binary_records_labels_pixels_and_channel_order(tmp_path):
    y, x, yt, xt = _cifar10(tmp_path / "cifar-10-batches-bin")
    raw = DATASETS.get("cifar10")(root=str(tmp_path))                  # the parent folder is found too
    assert raw.train_x.dtype == torch.uint8 and raw.train_x.shape == (11, 3, 32, 32)
    assert torch.equal(raw.train_x, torch.from_numpy(x)) and torch.equal(raw.train_y, torch.from_numpy(y).long())
    assert torch.equal(raw.test_x, torch.from_numpy(xt)) and raw.test_y.tolist() == yt.tolist()
    assert raw.class_names[0] == "airplane" and len(raw.class_names) == 10
    # channel order: record bytes 1..1024 are the red plane (row-major), then green, then blue
    rec = np.fromfile(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin", np.uint8).reshape(-1, 3073)
    assert raw.train_x[0, 0, 0, 1] == rec[0, 2] and raw.train_x[0, 1, 0, 0] == rec[0, 1 + 1024]
    assert raw.train_x[0, 2, 31, 31] == rec[0, 3072] and raw.train_x[0, 0, 1, 0] == rec[0, 1 + 32]
    s = load_data("cifar10", root=str(tmp_path / "cifar-10-batches-bin"), val_size=2)
    assert s.input_shape == (3, 32, 32) and s.input_dtype == "uint8" and len(s.test_y) == 4


def test_cifar100_fine_and_coarse_labels(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    rng = np.random.default_rng(1)
    rec, lab, img = _records(rng, 6, [20, 100])
    rec.tofile(d / "train.bin")
    rec_t, lab_t, _ = _records(rng, 3, [20, 100])
    rec_t.tofile(d / "test.bin")
    (d / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)))
    (d / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)))
    fine = DATASETS.get("cifar100")(root=str(d))
    assert fine.train_y.tolist() == lab[:, 1].tolist() and fine.class_names[5] == "fine5"
    assert torch.equal(fine.train_x, torch.from_numpy(img)) and fine.test_y.tolist() == lab_t[:, 1].tolist()
    coarse = DATASETS.get("cifar100")(root=str(d), label="coarse")
    assert coarse.train_y.tolist() == lab[:, 0].tolist() and len(coarse.class_names) == 20
    cfg = load_config(overrides=["data.name=cifar100", f"data.root={d}", "data.label=coarse"])
    assert cfg["data"]["label"] == "coarse"
    with pytest.raises(ConfigError, match="data.label"):
        load_config(overrides=["data.label=medium"])
    with pytest.raises(ValueError, match="label: dataset 'cifar10' takes no option"):
        load_data("cifar10", root=str(d), label="coarse")


def test_cifar_bad_inputs_name_the_files(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    _cifar10(d, names=False)
    assert DATASETS.get("cifar10")(root=str(d)).class_names == [str(i) for i in range(10)]
    (d / "data_batch_3.bin").unlink()
    (d / "test_batch.bin").unlink()
    with pytest.raises(DataError, match="missing data_batch_3.bin, test_batch.bin"):
        load_data("cifar10", root=str(d))
    _cifar10(d)
    with open(d / "data_batch_2.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError, match="data_batch_2.bin: 6156 bytes is not a whole number of 3073-byte records"):
        load_data("cifar10", root=str(d))
    _cifar10(d)
    raw = bytearray((d / "test_batch.bin").read_bytes())
    raw[3073] = 12                                                        # record 1's label
    (d / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="test_batch.bin: record 1 has label 12, outside 0..9"):
        load_data("cifar10", root=str(d))
    with pytest.raises(DataError, match="needs data.root.*cifar-10-binary.tar.gz"):
        load_data("cifar10")
    with pytest.raises(DataError, match="not found"):
        load_data("cifar10", root=str(tmp_path / "nowhere"))


def test_the_pickled_python_release_is_refused_never_loaded(tmp_path, monkeypatch):
    import pickle
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for f in ("data_batch_1", "batches.meta", "test_batch"):
        (py / f).write_bytes(b"not read")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    for root in (py, tmp_path):
        with pytest.raises(DataError, match="Python release of cifar10 .pickled batches.; a pickle can run arbitrary "
                                            "code.*cifar-10-binary.tar.gz.*cs.toronto.edu"):
            load_data("cifar10", root=str(root))
    py100 = tmp_path / "cifar-100-python"
    py100.mkdir()
    (py100 / "train").write_bytes(b"not read")
    with pytest.raises(DataError, match="Python release of cifar100.*cifar-100-binary.tar.gz"):
        load_data("cifar100", root=str(py100))
