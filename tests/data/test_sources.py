"""The user's own data (traintricks/data/sources.py): arrays (.npz / .npy folder), csv, python factories.

Tiny data generated in each test; a few training steps through the recipe and the CLI; every bad input with its
clear error."""
import json
import shutil
import sys
import textwrap

import numpy as np
import pytest
import torch

from traintricks.cli import main
from traintricks.config import ConfigError, load_config
from traintricks.data import DataError, load_data
from traintricks.training import build_trainer
from traintricks.training import checkpoint as ckpt

FAST = ["model.name=mlp", "callbacks=[]", "data.augment=[]", "epochs=1", "precision=fp32", "channels_last=false",
        "batch_size=16", "threads=1", "data.val_size=0.1"]


def sets(*extra):
    return [a for kv in [*FAST, *extra] for a in ("--set", kv)]


def blobs(n=100, f=5, k=3, seed=0):
    """Separable classes: label = argmax of the first k features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    return x, x[:, :k].argmax(1).astype(np.int64)


# ------------------------------------------------------------------------------------------------ arrays
def test_arrays_npz_classification_split_and_standardization(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_data("arrays", root=str(tmp_path / "d.npz"), val_size=0.1)
    assert s.task == "classification" and s.class_names == ["0", "1", "2"] and s.input_shape == (5,)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (72, 8, 20)            # seeded 20% test, then 10% val
    # standardization statistics: the training portion's, per feature
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    train_all = torch.as_tensor(x)[perm[20:]]
    vperm = torch.randperm(80, generator=torch.Generator().manual_seed(0))
    tr = train_all[vperm[8:].sort().values]
    torch.testing.assert_close(torch.tensor(s.mean), tr.mean(0))
    torch.testing.assert_close(torch.tensor(s.std), tr.std(0))
    torch.testing.assert_close(s.test_x, (torch.as_tensor(x)[perm[:20]] - tr.mean(0)) / tr.std(0))
    torch.testing.assert_close(s.test_y, torch.as_tensor(y)[perm[:20]])


def test_arrays_folder_with_own_test_set_and_regression_targets(tmp_path):
    rng = np.random.default_rng(1)
    x, xt = rng.normal(size=(60, 4)), rng.normal(size=(10, 4))
    y, yt = x @ [1.0, 2, 0, 0] * 10 + 5, xt @ [1.0, 2, 0, 0] * 10 + 5
    for k, a in dict(x=x, y=y, x_test=xt, y_test=yt).items():
        np.save(tmp_path / f"{k}.npy", a)
    s = load_data("arrays", root=str(tmp_path), val_size=0)
    assert s.task == "regression" and s.train_y.shape == (60, 1) and s.test_y.shape == (10, 1)
    mean, std = torch.tensor(y).float().mean(), torch.tensor(y).float().std()
    torch.testing.assert_close(torch.tensor(s.target_mean), mean[None])
    torch.testing.assert_close(s.test_y, ((torch.tensor(yt).float() - mean) / std)[:, None])


def _npz(tmp_path, **arrays):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    return str(p)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((10, 2))), "missing key 'y'"),
    (dict(x=np.zeros((10, 2)), y=np.zeros(9, dtype=int)), "10 inputs but 9 targets (mismatched lengths)"),
    (dict(x=np.array([["a", "b"]] * 10), y=np.zeros(10, dtype=int)), "non-numeric dtype"),
    (dict(x=np.where(np.arange(20).reshape(10, 2) == 7, np.nan, 0.0), y=np.zeros(10, dtype=int)),
     "NaN/infinite value(s), the first (NaN) at index (3, 1)"),
    (dict(x=np.zeros((10, 2)), y=np.zeros(10, dtype=int), x_test=np.zeros((3, 2))), "missing key 'y_test'"),
    (dict(x=np.zeros((10, 2)), y=-np.ones(10, dtype=int)), "negative label -1"),
])
def test_arrays_bad_inputs_name_file_and_problem(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError) as e:
        load_data("arrays", root=path)
    assert path in str(e.value) and message in str(e.value)


def test_arrays_refuses_pickled_object_arrays_and_missing_files(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="x.npy.*pickles"):
        load_data("arrays", root=str(tmp_path))
    with pytest.raises(DataError, match="nope.npz: not found"):
        load_data("arrays", root=str(tmp_path / "nope.npz"))
    (tmp_path / "x.npy").unlink()
    with pytest.raises(DataError, match="no x.npy"):
        load_data("arrays", root=str(tmp_path))


def test_arrays_train_resume_and_report_from_the_cli(tmp_path, capsys):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "run"
    argv = ["train", *sets("data.name=arrays", f"data.root={tmp_path / 'd.npz'}", "epochs=2"), "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    full = json.loads((out / "summary.json").read_text())
    assert full["dataset"] == "arrays" and full["epochs"] == 2
    _kill_resume_and_compare(out, capsys)
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    assert (out / "report.html").is_file()


def _kill_resume_and_compare(out, capsys):
    """Make ``out`` look like a run killed in its last epoch, resume it: the same final weights and metrics."""
    full = json.loads((out / "summary.json").read_text())
    weights = ckpt.load_weights(out / "model.safetensors")
    shutil.rmtree(out / "checkpoints" / "epoch-0002")
    for f in ("summary.json", "model.safetensors"):
        (out / f).unlink()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] == full["test_accuracy"]
    resumed = ckpt.load_weights(out / "model.safetensors")
    assert weights.keys() == resumed.keys()
    for k in weights:
        assert torch.equal(weights[k], resumed[k]), k


# ------------------------------------------------------------------------------------------------ csv
def _csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(str(c) for c in r) + "\n" for r in rows))
    return str(path)


def test_csv_string_labels_become_class_indices_and_train_from_the_cli(tmp_path, capsys):
    x, y = blobs()
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    path = _csv(tmp_path / "t.csv", ["f0", "f1", "species", "f2", "f3", "f4"],
                [[*r[:2], n, *r[2:]] for r, n in zip(x.round(4), names)])
    s = load_data("csv", root=path, target="species", val_size=0)
    assert s.class_names == ["setosa", "versicolor", "virginica"] and s.input_shape == (5,)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.test_y, torch.as_tensor(y)[perm[:20]])
    out = tmp_path / "run"
    assert main(["train", *sets("data.name=csv", f"data.root={path}", "data.target=species"), "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert "target = \"species\"" in (out / "config.toml").read_text()


def test_csv_integer_labels_keep_their_names_and_regression_targets(tmp_path):
    rows = [[i, i % 7, (i % 3) * 10, 2.5 * i] for i in range(100)]
    path = _csv(tmp_path / "t.csv", ["a", "b", "label", "y"], rows)
    s = load_data("csv", root=path, target="label")
    assert s.class_names == ["0", "10", "20"] and s.task == "classification" and s.input_shape == (3,)
    s = load_data("csv", root=path, target=["y", "label"])
    assert s.task == "regression" and s.class_names == ["y", "label"] and s.train_y.shape[1] == 2
    assert s.input_shape == (2,)


def test_csv_folder_with_train_and_test(tmp_path):
    _csv(tmp_path / "train.csv", ["a", "t"], [[i, i % 2] for i in range(30)])
    _csv(tmp_path / "test.csv", ["a", "t"], [[i, i % 2] for i in range(5)])
    s = load_data("csv", root=str(tmp_path), target="t", val_size=0)
    assert len(s.train_x) == 30 and len(s.test_x) == 5


@pytest.mark.parametrize("rows, message", [
    ([[1, "x", 0], [2, "3", 1]], "non-numeric column 'b': row 1 (line 2) holds 'x'"),
    ([[1, 2, 0], [2, "", 1]], "missing value in column 'b' at row 2 (line 3)"),
    ([[1, 2, 0], ["NA", 3, 1]], "missing value in column 'a' at row 2 (line 3)"),
    ([[1, 2, 0], [2, 3, ""]], "missing value in label column 'label' at row 2"),
])
def test_csv_bad_cells_name_the_column_and_first_bad_row(tmp_path, rows, message):
    path = _csv(tmp_path / "t.csv", ["a", "b", "label"], rows * 5)
    with pytest.raises(DataError) as e:
        load_data("csv", root=path, target="label")
    assert path in str(e.value) and message in str(e.value)


def test_csv_target_errors_name_data_target(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", ["a", "b"], [[1, 0]] * 10)
    cfg = load_config(overrides=[*FAST, "data.name=csv", f"data.root={path}", "data.target=label"])
    with pytest.raises(ConfigError, match="data.target.*no column 'label'.*columns: a, b"):
        build_trainer(cfg, progress=False)
    cfg = load_config(overrides=[*FAST, "data.name=csv", f"data.root={path}"])
    with pytest.raises(ConfigError, match="data.target.*needs data.target"):
        build_trainer(cfg, progress=False)
    cfg = load_config(overrides=[*FAST, "data.name=digits", "data.target=b"])
    with pytest.raises(ConfigError, match="data.target.*'digits' takes no option 'target'.*csv"):
        build_trainer(cfg, progress=False)
    with pytest.raises(ConfigError, match="data.target"):
        load_config(overrides=["data.target=3"])
    assert main(["train", *sets("data.name=csv", f"data.root={tmp_path / 'missing.csv'}", "data.target=a"),
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "missing.csv: not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ python
FACTORY = '''
import torch
from torch.utils.data import Dataset, TensorDataset

class Pairs(Dataset):                      # a user's own Dataset class, items as (numpy-free) tuples
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x[:, :2].argmax(1)
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], int(self.y[i])

def two():
    return Pairs(80, 0), Pairs(20, 1)

def three():
    return Pairs(60, 0), Pairs(10, 2), Pairs(20, 1)

def regression():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, x.sum(1)), TensorDataset(x[:10], x[:10].sum(1))

def one():
    return Pairs(10, 0)

not_callable = 3
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    name = f"user_data_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_python_factory_two_and_three_sets(factory_module):
    s = load_data("python", factory=f"{factory_module}:two", val_size=0.1)
    assert s.task == "classification" and s.class_names == ["0", "1"] and s.input_shape == (6,)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (72, 8, 20)
    mod = sys.modules[factory_module]
    test = mod.Pairs(20, 1)
    torch.testing.assert_close(s.test_y, test.y)
    torch.testing.assert_close(s.test_x, (test.x - torch.tensor(s.mean)) / torch.tensor(s.std))
    s = load_data("python", factory=f"{factory_module}:three", val_size=0.5)      # its own val set is used
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (60, 10, 20)
    torch.testing.assert_close(s.val_y, mod.Pairs(10, 2).y)
    s = load_data("python", factory=f"{factory_module}:regression")
    assert s.task == "regression" and s.train_y.shape[1] == 1


@pytest.mark.parametrize("factory, message", [
    ("no_such_module_xyz:fn", "module 'no_such_module_xyz' not found"),
    ("{m}:missing", "has no attribute 'missing'"),
    ("{m}:not_callable", "is a int, not callable"),
])
def test_python_factory_wrong_path_is_a_config_error(factory_module, factory, message):
    cfg = load_config(overrides=[*FAST, "data.name=python", f"data.factory={factory.format(m=factory_module)}"])
    with pytest.raises(ConfigError, match="data.factory") as e:
        build_trainer(cfg, progress=False)
    assert message in str(e.value)


def test_python_factory_wrong_return_and_malformed_path(factory_module):
    with pytest.raises(DataError, match="returned Pairs.*expected \\(train, test\\)"):
        load_data("python", factory=f"{factory_module}:one")
    with pytest.raises(ConfigError, match="data.factory.*pkg.module:function"):
        load_config(overrides=["data.factory=nocolon"])


def test_python_factory_trains_resumes_and_reports(factory_module, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *sets("data.name=python", f"data.factory={factory_module}:two", "epochs=2"), "--out",
            str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    _kill_resume_and_compare(out, capsys)
    assert main(["report", str(out)]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ folder
def _images(root, per_class=20, size=(8, 8), mode="L", classes=("dark", "light"), split="train"):
    """``per_class`` PNGs per class written with Pillow: class i's pixels around 60 + 120 i (separable)."""
    from PIL import Image
    rng = np.random.default_rng(len(str(root)))
    arrays = {}
    for i, c in enumerate(classes):
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            a = np.clip(rng.normal(60 + 120 * i, 20, size=shape), 0, 255).astype(np.uint8)
            Image.fromarray(a, mode).save(d / f"{j:03d}.png")
            arrays[(c, j)] = a
    return arrays


def test_folder_decodes_grey_images_splits_and_caches(tmp_path, monkeypatch):
    arrays = _images(tmp_path)                                           # 40 PNGs
    s = load_data("folder", root=str(tmp_path), val_size=0)
    assert s.class_names == ["dark", "light"] and s.input_shape == (1, 8, 8) and len(s.test_x) == 8
    raw = torch.stack([torch.from_numpy(arrays[(c, j)])[None] for c in ("dark", "light") for j in range(20)])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    tr = raw[perm[8:]].float()
    torch.testing.assert_close(s.test_x, (raw[perm[:8]].float() - tr.mean()) / tr.std())
    torch.testing.assert_close(s.test_y, torch.arange(40).div(20, rounding_mode="floor")[perm[:8]])
    cache = tmp_path / ".traintricks-cache.pt"
    assert cache.is_file() and torch.load(cache, weights_only=True)["x"].dtype == torch.uint8
    import PIL.Image
    opened = []
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or pytest.fail("decoded again"))
    s2 = load_data("folder", root=str(tmp_path), val_size=0)             # served from the cache
    torch.testing.assert_close(s2.test_x, s.test_x)
    monkeypatch.undo()
    from PIL import Image                                                # a changed file: the cache is rebuilt
    Image.fromarray(np.full((8, 8), 255, np.uint8), "L").save(tmp_path / "train" / "dark" / "000.png")
    s3 = load_data("folder", root=str(tmp_path), val_size=0)
    assert not torch.equal(s3.train_x, s.train_x)


def test_folder_rgb_test_folder_and_image_size(tmp_path):
    _images(tmp_path, per_class=6, size=(12, 10), mode="RGB")
    _images(tmp_path, per_class=2, size=(12, 10), mode="RGB", split="test")
    s = load_data("folder", root=str(tmp_path), val_size=0, image_size=6)
    assert s.input_shape == (3, 6, 6) and len(s.train_x) == 12 and len(s.test_x) == 4
    assert s.test_y.tolist() == [0, 0, 1, 1]


def test_folder_reads_other_pillow_formats_and_warns_about_files_that_are_not_images(tmp_path):
    # a new user's .webp images were left out and a readme.txt skipped without a word
    from PIL import Image
    _images(tmp_path, per_class=3)
    Image.fromarray(np.full((8, 8), 200, np.uint8), "L").save(tmp_path / "train" / "light" / "extra.webp",
                                                              lossless=True)
    (tmp_path / "train" / "dark" / "readme.txt").write_text("notes")
    with pytest.warns(UserWarning, match=r"1 file\(s\) that are not images.*dark/readme.txt"):
        s = load_data("folder", root=str(tmp_path), val_size=0)
    assert len(s.train_x) + len(s.test_x) == 7


def test_folder_trains_resumes_and_reports_from_the_cli(tmp_path, capsys):
    _images(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", *sets("data.name=folder", f"data.root={tmp_path / 'data'}", "epochs=2", "batch_size=8",
                           'data.augment=["flip"]', "data.augment_from_epoch=1"),
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    _kill_resume_and_compare(out, capsys)
    assert main(["report", str(out)]) == 0, capsys.readouterr().err


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="train: missing folder"):
        load_data("folder", root=str(tmp_path))
    _images(tmp_path, per_class=5)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty: empty class"):
        load_data("folder", root=str(tmp_path))
    (tmp_path / "train" / "empty").rmdir()
    bad = tmp_path / "train" / "light" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="bad.png: unreadable or corrupt image.*data.skip_bad"):
        load_data("folder", root=str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.*bad.png"):
        s = load_data("folder", root=str(tmp_path), skip_bad=True, val_size=0)
    assert len(s.train_x) + len(s.test_x) == 10                          # never a silent wrong label
    bad.unlink()
    from PIL import Image
    Image.fromarray(np.zeros((9, 8), np.uint8), "L").save(tmp_path / "train" / "light" / "big.png")
    with pytest.raises(DataError, match="mixed image sizes.*8x8.*big.png is 8x9; set data.image_size"):
        load_data("folder", root=str(tmp_path))
    assert load_data("folder", root=str(tmp_path), image_size=8).input_shape == (1, 8, 8)
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(overrides=["data.image_size=-1"])
