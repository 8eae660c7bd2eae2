"""Datasets held in memory as tensors, chosen by name through :data:`DATASETS`.

- ``fashion_mnist``: Zalando's Fashion-MNIST (60k train / 10k test, 28x28 grey), read from IDX
  files in ``root``, ``$TRAINTRICKS_DATA`` or Debian's ``/usr/share/datasets/fashion-mnist``
  (``apt-get install dataset-fashion-mnist``). Never downloaded at run time.
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), for quick runs.
- ``mnist1d``: MNIST-1D (Greydanus 2020, arXiv:2011.14439), generated offline by the ``mnist1d``
  package (4,000 train / 1,000 test sequences of length 40).
- ``diabetes`` (task ``regression``): scikit-learn's bundled diabetes data (442 patients, 10 features; target:
  disease progression after one year), targets ``(N, 1)`` float32 standardized with the training split's mean
  and standard deviation; fixed 20% test split.
- ``digits_multilabel`` (task ``multilabel``): the ``digits`` images with 4 binary labels per image, float32
  ``(N, 4)`` in {0, 1}: ``even``, ``ge5`` (digit >= 5), ``prime`` (2, 3, 5, 7), ``loop`` (a closed loop: 0, 6,
  8, 9); same fixed test split as ``digits``.

Every dataset records its ``task`` (a name in :data:`traintricks.evaluation.tasks.TASKS`, ``"classification"``
unless said) on :class:`RawData` and :class:`DataSplits`; a config's ``task = "auto"`` takes it from there. For a
non-classification task ``class_names`` names the model's outputs (the regression targets or the labels), so
``num_classes`` is the number of outputs the model needs.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..registry import Registry
from .idx import DataError, read_idx

DATASETS = Registry("dataset", section="data")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


@dataclass
class RawData:
    """A dataset as loaded: images (N, C, ...) of any dtype, integer labels, fixed test split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    task: str = "classification"
    #: regression targets' standardization (the training split's mean and standard deviation per target), if any
    target_mean: list[float] = field(default_factory=list)
    target_std: list[float] = field(default_factory=list)
    #: a validation split of the source's own (then ``load_data`` takes none from the training examples)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass
class DataSplits:
    """Standardized float32 train / validation / test tensors plus what a model needs to know."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    task: str = "classification"
    target_mean: list[float] = field(default_factory=list)
    target_std: list[float] = field(default_factory=list)
    #: the raw inputs' value range before standardization (uint8: 0..255; floats in [0, 1]: (0, 1); else the
    #: training inputs' min and max): what the augmentation policies take for black and white
    pixel_range: tuple[float, float] = (0.0, 1.0)
    #: the source's input dtype before standardization (``"uint8"`` for images: values 0..255)
    input_dtype: str = "float32"
    streamed = False

    @property
    def num_classes(self) -> int:
        """Classes (classification) or model outputs (other tasks: target dimensions or labels)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def _find_fashion_dir(root: str) -> tuple[Path | None, list[str]]:
    candidates: list[Path] = []
    if root:
        candidates.append(Path(root).expanduser())
    env = os.environ.get("TRAINTRICKS_DATA")
    if env:
        candidates += [Path(env).expanduser() / "fashion-mnist", Path(env).expanduser()]
    if not root:
        candidates.append(Path(DEBIAN_FASHION_MNIST))
    for c in candidates:
        if any((c / f"train-images-idx3-ubyte{ext}").is_file() for ext in (".gz", "")):
            return c, [str(c) for c in candidates]
    return None, [str(c) for c in candidates]


def _idx_file(directory: Path, stem: str) -> Path:
    for ext in (".gz", ""):
        p = directory / (stem + ext)
        if p.is_file():
            return p
    raise DataError(f"{directory / (stem + '.gz')}: file not found (nor without .gz)")


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str = "") -> RawData:
    """Fashion-MNIST (Xiao et al. 2017, 1708.07747) from IDX files; never downloaded at run time."""
    directory, searched = _find_fashion_dir(root)
    if directory is None:
        raise DataError(
            "Fashion-MNIST not found; looked in: " + ", ".join(searched) + ". Install it with "
            "`apt-get install dataset-fashion-mnist`, or put train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
            "in a directory and pass it as data.root (or set $TRAINTRICKS_DATA).")
    out = []
    for split in ("train", "t10k"):
        img_path = _idx_file(directory, f"{split}-images-idx3-ubyte")
        lab_path = _idx_file(directory, f"{split}-labels-idx1-ubyte")
        x, y = read_idx(img_path), read_idx(lab_path)
        if x.ndim != 3:
            raise DataError(f"{img_path}: expected images of shape (N, H, W), got {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{lab_path}: {len(y)} labels for {len(x)} images in {img_path.name}")
        if y.numel() and int(y.max()) >= len(FASHION_CLASSES):
            raise DataError(f"{lab_path}: label {int(y.max())} out of range 0..9")
        out += [x.unsqueeze(1), y.long()]
    return RawData(*out, class_names=list(FASHION_CLASSES))


def _fixed_test_split(x: torch.Tensor, y: torch.Tensor, test_fraction: float) -> tuple:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


@DATASETS.register("digits")
def digits(root: str = "") -> RawData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images; fixed 20% test split)."""
    d = _load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return RawData(*_fixed_test_split(x, y, 0.2), class_names=[str(i) for i in range(10)])


@DATASETS.register("mnist1d")
def mnist1d(root: str = "") -> RawData:
    """MNIST-1D (Greydanus 2020, 2011.14439): 1-D sequences of length 40, generated offline."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("dataset 'mnist1d' needs the mnist1d package: pip install 'traintricks[small-data]'") from None
    d = make_dataset(get_dataset_args())  # generated locally; get_dataset() would download
    f = lambda a: torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # noqa: E731
    return RawData(f(d["x"]), torch.as_tensor(d["y"]).long(), f(d["x_test"]),
                   torch.as_tensor(d["y_test"]).long(), class_names=[str(i) for i in range(10)])


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits datasets need scikit-learn: pip install 'traintricks[small-data]'") from None
    return load_digits()


@DATASETS.register("diabetes")
def diabetes(root: str = "") -> RawData:
    """scikit-learn's diabetes data, a regression task: 10 features, standardized progression target (442 patients)."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise DataError("dataset 'diabetes' needs scikit-learn: pip install 'traintricks[small-data]'") from None
    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)[:, None]
    tx, ty, vx, vy = _fixed_test_split(x, y, 0.2)
    mean, std = ty.mean(), ty.std()
    return RawData(tx, (ty - mean) / std, vx, (vy - mean) / std, class_names=["progression"], task="regression")


DIGIT_LABELS = {"even": (0, 2, 4, 6, 8), "ge5": (5, 6, 7, 8, 9), "prime": (2, 3, 5, 7), "loop": (0, 6, 8, 9)}


@DATASETS.register("digits_multilabel")
def digits_multilabel(root: str = "") -> RawData:
    """The 8x8 digits with 4 binary labels per image (even, >= 5, prime, closed loop), a multi-label task."""
    d = _load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    digit = torch.tensor(d.target, dtype=torch.long)
    y = torch.stack([torch.isin(digit, torch.tensor(v)) for v in DIGIT_LABELS.values()], dim=1).float()
    return RawData(*_fixed_test_split(x, y, 0.2), class_names=list(DIGIT_LABELS), task="multilabel")


#: ``data.*`` config keys that are options of some sources (passed to the sources that take them)
SOURCE_OPTIONS = ("target", "factory", "image_size", "skip_bad", "stream", "max_memory_mb", "workers", "label")
#: their config defaults that are not "unset" values (giving such a value to a source that does not take the
#: option is no error)
SOURCE_DEFAULTS: dict[str, Any] = {"stream": "auto", "max_memory_mb": 2048, "workers": -1}


def data_stats(data: Any, image_size: int = 0) -> dict[str, Any]:
    """What a trained model needs to be applied to new inputs (``data_stats.json`` of a run, read by
    :func:`traintricks.load_run`): shapes, class names, task, the input standardization (per channel / feature,
    on the source's own scale: ``input_dtype`` ``"uint8"`` means values 0..255) and the regression targets'."""
    return {"version": 1, "dataset": data.name, "task": data.task, "input_shape": list(data.input_shape),
            "num_classes": data.num_classes, "class_names": list(data.class_names), "mean": list(data.mean),
            "std": list(data.std), "target_mean": list(data.target_mean), "target_std": list(data.target_std),
            "input_dtype": data.input_dtype, "image_size": image_size, "streamed": bool(data.streamed),
            "stats_sample": getattr(data, "stats_sample", len(data.train_y))}


def pixel_range(x: torch.Tensor) -> tuple[float, float]:
    """The value range of raw inputs ``x``: (0, 255) for uint8, (0, 1) when every value lies in it, else
    (min, max)."""
    if x.dtype == torch.uint8:
        return (0.0, 255.0)
    if x.numel() == 0:
        return (0.0, 1.0)
    lo, hi = float(x.min()), float(x.max())
    return (0.0, 1.0) if 0.0 <= lo and hi <= 1.0 else (lo, hi if hi > lo else lo + 1.0)


def load_data(name: str, root: str = "", limit: int = 0, val_size: float = 0.1, seed: int = 0,
              **options: Any) -> DataSplits:
    """Load dataset ``name`` and split it.

    ``limit`` keeps only the first N training examples (0: all). ``val_size`` takes that many
    (if >= 1) or that fraction (if < 1) of them, chosen with ``seed``, as the validation set (unless the source
    brings its own validation split); the test set is the dataset's own. Inputs are standardized per channel with
    the training portion's mean and standard deviation. ``options`` (``target``, ``factory``, ...) go to the
    sources that take them; a set (non-empty, non-default) option the source does not take raises ``ValueError``
    naming it. An image folder streamed from disk (``stream``, ``max_memory_mb``: see
    :mod:`traintricks.data.streaming`) gives a :class:`~traintricks.data.streaming.StreamedSplits` with the same
    splits and attributes, its statistics estimated from a seeded sample of the training images.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    source = DATASETS.get(name)
    params = inspect.signature(source).parameters
    for k, v in options.items():
        if k not in params and v not in ("", None, [], 0, False) and not (k in SOURCE_DEFAULTS and
                                                                          v == SOURCE_DEFAULTS[k]):
            takes = [n for n in DATASETS.names() if k in inspect.signature(DATASETS.get(n)).parameters]
            raise ValueError(f"{k}: dataset {name!r} takes no option {k!r} (it is one of: {', '.join(takes)})")
    raw = source(root=root, **{k: v for k, v in options.items() if k in params})
    from .streaming import StreamedRaw, streamed_splits
    if isinstance(raw, StreamedRaw):             # an image folder too large for memory (data.stream)
        return streamed_splits(raw, name, limit, val_size, seed)  # type: ignore[return-value]
    tx, ty = raw.train_x, raw.train_y
    if limit:
        tx, ty = tx[:limit], ty[:limit]
    n = len(tx)
    if raw.val_x is not None:
        vx, vy, train_x, train_y = raw.val_x, raw.val_y, tx.float(), ty
    else:
        n_val = int(val_size) if val_size >= 1 else int(round(val_size * n))
        if val_size < 0 or n_val >= n:
            raise ValueError(f"val_size {val_size} leaves no training examples out of {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        vi, ti = perm[:n_val].sort().values, perm[n_val:].sort().values
        vx, vy, train_x, train_y = tx[vi], ty[vi], tx[ti].float(), ty[ti]
    dims = [0] + list(range(2, train_x.ndim))
    mean = train_x.mean(dim=dims, keepdim=True)
    std = train_x.std(dim=dims, keepdim=True).clamp_min(1e-8)
    norm = lambda x: ((x.float() - mean) / std).contiguous()  # noqa: E731
    return DataSplits(name=name, train_x=norm(train_x), train_y=train_y, val_x=norm(vx), val_y=vy,
                      test_x=norm(raw.test_x), test_y=raw.test_y, class_names=raw.class_names,
                      mean=mean.flatten().tolist(), std=std.flatten().tolist(), task=raw.task,
                      target_mean=list(raw.target_mean), target_std=list(raw.target_std),
                      pixel_range=pixel_range(tx),
                      input_dtype=str(raw.train_x.dtype).removeprefix("torch."))


def data_from_config(cfg: dict[str, Any]) -> DataSplits:
    """The dataset of a validated config: ``load_data`` with its ``data.*`` keys and ``seed``."""
    d = cfg["data"]
    return load_data(d["name"], root=d["root"], limit=d["limit"], val_size=d["val_size"], seed=cfg["seed"],
                     **{k: d[k] for k in SOURCE_OPTIONS if k in d})
