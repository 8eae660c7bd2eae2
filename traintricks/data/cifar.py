"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images") from the
user's copy of the official *binary* release, as ``data.name = "cifar10"`` / ``"cifar100"``.

``data.root`` is the extracted folder (``cifar-10-batches-bin/``, ``cifar-100-binary/``) or the folder holding it:

- CIFAR-10: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (50,000 images) and ``test_batch.bin`` (10,000), each a
  sequence of 3,073-byte records: 1 label byte (0..9), then 3,072 pixel bytes, the 1,024 red values of the 32x32
  image in row-major order, then the green, then the blue; class names in ``batches.meta.txt`` (one per line).
- CIFAR-100: ``train.bin`` (50,000) and ``test.bin`` (10,000), 3,074-byte records: the coarse label (0..19), the
  fine label (0..99), then the pixels as above; names in ``fine_label_names.txt`` / ``coarse_label_names.txt``.
  ``data.label = "fine"`` (default, 100 classes) or ``"coarse"`` (20 superclasses).

Images are uint8 ``(N, 3, 32, 32)`` (RGB channel order), labels int64 ``(N,)``. The files are read with
``numpy.fromfile``: nothing in them is executed. The *Python* release (``cifar-10-batches-py/``,
``cifar-100-python/``) is a pickle, which can run arbitrary code when loaded: it is refused with that reason and
where to get the binary one. Get the binary release at https://www.cs.toronto.edu/~kriz/cifar.html
("CIFAR-10 binary version (suitable for C programs)", ``cifar-10-binary.tar.gz``; ``cifar-100-binary.tar.gz``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .datasets import DATASETS, RawData
from .idx import DataError

PIXELS = 3 * 32 * 32
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

_LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-bin", "python": ("cifar-10-batches-py", "data_batch_1", "batches.meta"),
                "train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"],
                "archive": "cifar-10-binary.tar.gz", "labels": 1, "classes": 10},
    "cifar100": {"folder": "cifar-100-binary", "python": ("cifar-100-python", "train", "meta"),
                 "train": ["train.bin"], "test": ["test.bin"], "archive": "cifar-100-binary.tar.gz",
                 "labels": 2, "classes": 100},
}


def _refuse_python_release(source: str, p: Path) -> None:
    lay = _LAYOUT[source]
    folder, *files = lay["python"]
    python_dir = p / folder if (p / folder).is_dir() else p
    if p.name == folder or (p / folder).is_dir() or any((python_dir / f).is_file() for f in files):
        raise DataError(f"{python_dir}: this is the Python release of {source} (pickled batches); a pickle can run "
                        f"arbitrary code when loaded, so traintricks never unpickles it. Download the binary "
                        f"release ({lay['archive']}, from {URL}), extract it and give data.root = the "
                        f"{lay['folder']}/ folder")


def _find_dir(source: str, root: str) -> Path:
    lay = _LAYOUT[source]
    if not root:
        raise DataError(f"data.name = {source!r} needs data.root: the extracted {lay['folder']}/ folder of the "
                        f"binary release ({lay['archive']}, from {URL})")
    p = Path(root).expanduser()
    if not p.exists():
        raise DataError(f"{p}: not found (data.root of data.name = {source!r})")
    if p.is_file():
        raise DataError(f"{p}: a file; data.root is the extracted {lay['folder']}/ folder (extract "
                        f"{lay['archive']} first: tar xzf {lay['archive']})")
    if (p / lay["folder"]).is_dir():
        p = p / lay["folder"]
    if not any((p / f).is_file() for f in lay["train"] + lay["test"]):
        _refuse_python_release(source, p)
    missing = [f for f in lay["train"] + lay["test"] if not (p / f).is_file()]
    if missing:
        raise DataError(f"{p}: missing {', '.join(missing)} (the {source} binary release has "
                        f"{', '.join(lay['train'] + lay['test'])}; from {lay['archive']}, {URL})")
    return p


def _read(path: Path, n_labels: int, classes: int, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary batch file: uint8 images (N, 3, 32, 32) and the label at byte ``which`` of each record."""
    record = n_labels + PIXELS
    size = path.stat().st_size
    if size == 0 or size % record:
        raise DataError(f"{path}: {size} bytes is not a whole number of {record}-byte records ({n_labels} label "
                        f"byte(s) + {PIXELS} pixels); a damaged or different file")
    a = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    y = a[:, which].astype(np.int64)
    if (y >= classes).any():
        i = int(np.argmax(y >= classes))
        raise DataError(f"{path}: record {i} has label {int(y[i])}, outside 0..{classes - 1}; a damaged or "
                        f"different file")
    x = a[:, n_labels:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def _names(path: Path, count: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(count)]
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(names) != count:
        raise DataError(f"{path}: {len(names)} class names, expected {count}")
    return names


def _load(source: str, root: str, label: str) -> RawData:
    lay = _LAYOUT[source]
    p = _find_dir(source, root)
    if source == "cifar10":
        which, classes, names_file = 0, 10, p / "batches.meta.txt"
    else:
        which = 0 if label == "coarse" else 1
        classes = 20 if label == "coarse" else 100
        names_file = p / ("coarse_label_names.txt" if label == "coarse" else "fine_label_names.txt")
    parts = {split: [_read(p / f, lay["labels"], classes, which) for f in lay[split]] for split in ("train", "test")}
    cat = lambda ps: (torch.cat([x for x, _ in ps]), torch.cat([y for _, y in ps]))  # noqa: E731
    (x, y), (xt, yt) = cat(parts["train"]), cat(parts["test"])
    return RawData(x, y, xt, yt, class_names=_names(names_file, classes))


@DATASETS.register("cifar10")
def cifar10(root: str = "") -> RawData:
    """CIFAR-10 from the official binary release (data.root: cifar-10-batches-bin/); 50k/10k 32x32 RGB, 10 classes."""
    return _load("cifar10", root, "fine")


@DATASETS.register("cifar100")
def cifar100(root: str = "", label: str = "") -> RawData:
    """CIFAR-100 from the official binary release (data.root: cifar-100-binary/); data.label = fine (100) or coarse (20)."""
    if label not in ("", "fine", "coarse"):
        raise ValueError(f"label: must be 'fine' or 'coarse', got {label!r}")
    return _load("cifar100", root, label or "fine")
