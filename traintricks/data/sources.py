"""The user's own data as a :data:`~traintricks.data.datasets.DATASETS` source (``data.name``).

- ``arrays``: ``data.root`` is an ``.npz`` file holding ``x`` and ``y`` (optional ``x_test``, ``y_test``) or a
  folder holding ``x.npy`` and ``y.npy`` (optional ``x_test.npy``, ``y_test.npy``). Integer (or bool) ``y`` is a
  classification task (labels ``0..K-1``, ``K = max + 1``); float ``y`` is a regression task (targets ``(N,)``
  become ``(N, 1)``).
- ``csv``: ``data.root`` is a ``.csv`` file with a header row, or a folder with ``train.csv`` (optional
  ``test.csv``). ``data.target`` names the label column (a string: classification; integer or string labels are
  mapped to class indices in sorted order, their names kept as ``class_names``) or a list of target columns
  (regression). Every other column is a numeric feature.
- ``python``: ``data.factory = "pkg.module:fn"``; ``fn()`` returns torch ``Dataset`` s ``(train, test)`` or
  ``(train, val, test)`` whose items are ``(input, target)``. They are materialized into tensors (the sets are
  meant to fit in memory). Integer targets: classification; float targets: regression.
- ``folder``: images in class subfolders, ``root/train/<class>/*.png|jpg|jpeg`` (optional ``root/test/<class>/``),
  decoded with Pillow into a uint8 ``(N, C, H, W)`` cache ``root/.traintricks-cache.pt`` (rebuilt when the files'
  paths, sizes or modification times change); grey stays 1 channel, colour is RGB; ``data.image_size`` resizes the
  shorter side and centre-crops; ``data.skip_bad`` skips unreadable files with a warning listing them. When the
  float32 tensors of the set would exceed ``data.max_memory_mb`` (``data.stream = "auto"``; ``true`` always), the
  files are streamed instead: a :class:`~traintricks.data.streaming.StreamedRaw` is returned (headers read, nothing
  decoded or cached) and :mod:`traintricks.data.streaming` serves the batches through ``DataLoader`` workers.

Without a test set a fixed 20% of the examples (permutation seeded with 0, as the built-in sets) is the test
split. Inputs are standardized by :func:`~traintricks.data.datasets.load_data` with the training portion's
statistics; regression targets are standardized here with the training split's mean and standard deviation
(recorded as ``target_mean`` / ``target_std`` on :class:`RawData` and :class:`DataSplits`, as for ``diabetes``).
Paths are read relative to the working directory. Bad input raises :class:`DataError` naming the file (or the
factory) and the problem.
"""
from __future__ import annotations

import csv
import importlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import warn
from .datasets import DATASETS, RawData, _fixed_test_split
from .idx import DataError
from .images import decode_image as _decode, is_grey as _is_grey

TEST_FRACTION = 0.2


# ------------------------------------------------------------------------------------------------ shared
def _check_numeric(where: str, a: np.ndarray) -> None:
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"{where}: non-numeric dtype {a.dtype}; expected numbers")
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
        if np.issubdtype(a.dtype, np.complexfloating):
            raise DataError(f"{where}: complex dtype {a.dtype}; expected real numbers")
        bad = ~np.isfinite(a)
        if bad.any():
            first = np.argwhere(bad)[0]
            kind = "NaN" if np.isnan(a[tuple(first)]) else "infinite"
            raise DataError(f"{where}: {int(bad.sum())} NaN/infinite value(s), the first ({kind}) at index "
                            f"{tuple(int(i) for i in first)}")


def _is_integral(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_


def _finish(where: str, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
            xt: Any, yt: Any, class_names: list[str] | None = None,
            task: str | None = None) -> RawData:
    """Splits (a seeded one without a test set), the task from ``y``'s dtype, regression targets standardized."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} inputs but {len(y)} targets (mismatched lengths)")
    if xt is None:
        if len(x) < 2:
            raise DataError(f"{where}: {len(x)} example(s); at least 2 are needed to split off a test set")
        tx, ty, vx, vy = _fixed_test_split(x, y, TEST_FRACTION)
    else:
        tx, ty = x, y
        vx, vy = torch.as_tensor(xt), torch.as_tensor(yt)
        if vx.ndim == 1:
            vx = vx[:, None]
        if len(vx) != len(vy):
            raise DataError(f"{where}: {len(vx)} test inputs but {len(vy)} test targets (mismatched lengths)")
        if vx.shape[1:] != tx.shape[1:]:
            raise DataError(f"{where}: test inputs have shape {tuple(vx.shape[1:])} per example, training inputs "
                            f"{tuple(tx.shape[1:])}")
    if len(tx) == 0:
        raise DataError(f"{where}: no training examples")
    if task is None:
        task = "classification" if not (ty.is_floating_point() or vy.is_floating_point()) else "regression"
    if task == "classification":
        ty, vy = ty.long(), vy.long()
        if ty.ndim != 1 or vy.ndim != 1:
            raise DataError(f"{where}: integer labels must be one per example (shape (N,)), got "
                            f"{tuple(ty.shape)}; use float targets for regression")
        low = min(int(ty.min()), int(vy.min()) if len(vy) else 0)
        if low < 0:
            raise DataError(f"{where}: negative label {low}; labels must be 0..K-1")
        if class_names is None:
            k = max(int(ty.max()), int(vy.max()) if len(vy) else 0) + 1
            class_names = [str(i) for i in range(k)]
        return RawData(tx, ty, vx, vy, class_names=class_names)
    ty, vy = ty.float(), vy.float()
    if ty.ndim == 1:
        ty, vy = ty[:, None], vy.reshape(-1, 1)
    if ty.ndim != 2 or vy.shape[1:] != ty.shape[1:]:
        raise DataError(f"{where}: regression targets must be (N,) or (N, T), got {tuple(ty.shape)} (train) and "
                        f"{tuple(vy.shape)} (test)")
    mean = ty.mean(0)
    std = ty.std(0).nan_to_num(1.0).clamp_min(1e-8) if len(ty) > 1 else torch.ones_like(mean)
    names = class_names or ([f"target{i}" for i in range(ty.shape[1])] if ty.shape[1] > 1 else ["target"])
    return RawData(tx, (ty - mean) / std, vx, (vy - mean) / std, class_names=names, task="regression",
                   target_mean=mean.tolist(), target_std=std.tolist())


def _need_root(source: str, root: str) -> Path:
    if not root:
        raise DataError(f"data.name = {source!r} needs data.root: the path of the data")
    p = Path(root).expanduser()
    if not p.exists():
        raise DataError(f"{p}: not found (data.root of data.name = {source!r})")
    return p


# ------------------------------------------------------------------------------------------------ arrays
def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{path}: cannot read it as a plain numeric array ({e}); object arrays (pickles) are "
                        f"refused") from None
    except OSError as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from None


@DATASETS.register("arrays")
def arrays(root: str = "") -> RawData:
    """NumPy arrays: an .npz with x, y (optional x_test, y_test) or a folder of x.npy, y.npy; int y classifies, float y regresses."""
    p = _need_root("arrays", root)
    found: dict[str, np.ndarray] = {}
    if p.is_dir():
        for key in ("x", "y", "x_test", "y_test"):
            f = p / f"{key}.npy"
            if f.is_file():
                found[key] = _load_npy(f)
        where = {k: str(p / f"{k}.npy") for k in ("x", "y", "x_test", "y_test")}
        missing = lambda k: f"{p}: no {k}.npy in the folder (an arrays folder holds x.npy and y.npy)"  # noqa: E731
    else:
        try:
            with np.load(p, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise DataError(f"{p}: a single array; data.name = 'arrays' needs an .npz with x and y, or "
                                    f"a folder with x.npy and y.npy")
                for key in z.files:
                    try:
                        found[key] = z[key]
                    except ValueError as e:
                        raise DataError(f"{p}: key {key!r} cannot be read as a plain numeric array ({e}); "
                                        f"object arrays (pickles) are refused") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: not a readable .npz file ({e})") from None
        where = {k: f"{p}[{k!r}]" for k in ("x", "y", "x_test", "y_test")}
        missing = lambda k: f"{p}: missing key {k!r} (keys found: {', '.join(found) or 'none'})"  # noqa: E731
    for k in ("x", "y"):
        if k not in found:
            raise DataError(missing(k))
    if ("x_test" in found) != ("y_test" in found):
        have, lack = ("x_test", "y_test") if "x_test" in found else ("y_test", "x_test")
        raise DataError(missing(lack) + f"; {have} is there, and the two come together")
    for k, a in found.items():
        if k in where:
            _check_numeric(where[k], a)
    return _finish(str(p), found["x"], found["y"], found.get("x_test"), found.get("y_test"))


# ------------------------------------------------------------------------------------------------ csv
def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read it as CSV ({e})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty file (expected a header row, then data rows)")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise DataError(f"{path}: column {dup!r} appears twice in the header")
    body = rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise DataError(f"{path}: row {i + 1} (line {i + 2}) has {len(r)} fields, the header {len(header)}")
    if not body:
        raise DataError(f"{path}: a header but no data rows")
    return header, body


_MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}


def _numbers(path: Path, name: str, cells: list[str]) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float64)
    for i, c in enumerate(cells):
        c = c.strip()
        if c.lower() in _MISSING:
            raise DataError(f"{path}: missing value in column {name!r} at row {i + 1} (line {i + 2}): {c!r}")
        try:
            v = float(c)
        except ValueError:
            raise DataError(f"{path}: non-numeric column {name!r}: row {i + 1} (line {i + 2}) holds {c!r}; "
                            f"features must be numbers (drop or encode the column)") from None
        if not math.isfinite(v):
            raise DataError(f"{path}: infinite value in column {name!r} at row {i + 1} (line {i + 2})")
        out[i] = v
    return out


@DATASETS.register("csv")
def csv_table(root: str = "", target: str | list[str] = "") -> RawData:
    """A CSV table with a header (or a folder with train.csv, test.csv): data.target names the label column or the regression targets."""
    p = _need_root("csv", root)
    files = [p / "train.csv", p / "test.csv"] if p.is_dir() else [p]
    if not files[0].is_file():
        raise DataError(f"{p}: a folder without train.csv (a csv source is a .csv file or a folder with train.csv "
                        f"and optionally test.csv)")
    if len(files) == 2 and not files[1].is_file():
        files = files[:1]
    if not target:
        raise ValueError("target: data.name = 'csv' needs data.target, the label column (classification) or a "
                         "list of target columns (regression)")
    targets = [target] if isinstance(target, str) else list(target)
    tables = [_read_csv(f) for f in files]
    header = tables[0][0]
    for t in targets:
        if t not in header:
            raise ValueError(f"target: no column {t!r} in {files[0]} (columns: {', '.join(header)})")
    if len(tables) == 2 and tables[1][0] != header:
        raise DataError(f"{files[1]}: its header {tables[1][0]} differs from {files[0]}'s {header}")
    features = [h for h in header if h not in targets]
    if not features:
        raise DataError(f"{files[0]}: no feature columns left besides the target(s) {targets}")
    xs, ys = [], []
    for f, (_, body) in zip(files, tables):
        cols = list(zip(*body))
        xs.append(np.stack([_numbers(f, h, list(cols[header.index(h)])) for h in features], axis=1))
        ys.append([[c.strip() for c in cols[header.index(t)]] for t in targets])
    if isinstance(target, str):                        # classification: labels (integers or names) -> indices
        for f, y in zip(files, ys):
            missing = [i for i, c in enumerate(y[0]) if c.lower() in ("", "na", "nan", "null", "none", "?")]
            if missing:
                raise DataError(f"{f}: missing value in label column {target!r} at row {missing[0] + 1} "
                                f"(line {missing[0] + 2})")
        labels = sorted({c for y in ys for c in y[0]})
        try:
            as_int = {c: int(c) for c in labels}
            labels.sort(key=as_int.__getitem__)
        except ValueError:
            pass
        index = {c: i for i, c in enumerate(labels)}
        yv = [np.array([index[c] for c in y[0]], dtype=np.int64) for y in ys]
        names: list[str] | None = labels
        task = "classification"
    else:
        yv = [np.stack([_numbers(f, t, y[j]) for j, t in enumerate(targets)], axis=1) for f, y in zip(files, ys)]
        names, task = list(targets), "regression"
    x = torch.as_tensor(xs[0], dtype=torch.float32)
    xt = torch.as_tensor(xs[1], dtype=torch.float32) if len(xs) == 2 else None
    yt = yv[1] if len(yv) == 2 else None
    return _finish(str(files[0]), x, torch.as_tensor(yv[0]), xt, None if yt is None else torch.as_tensor(yt),
                   class_names=names, task=task)


# ------------------------------------------------------------------------------------------------ python
def _resolve_factory(path: str) -> Any:
    """``"pkg.module:fn"`` -> the callable; ``ValueError`` naming ``factory`` and what is wrong."""
    mod_name, sep, attr = path.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"factory: expected 'pkg.module:function', got {path!r}")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"factory: module {mod_name!r} not found ({e}); is it installed or on PYTHONPATH?") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory: {path!r} is a {type(obj).__name__}, not callable")
    return obj


def _materialize(where: str, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A map-style ``Dataset`` of ``(input, target)`` items as two stacked tensors."""
    try:
        n = len(ds)
    except TypeError:
        raise DataError(f"{where}: {type(ds).__name__} has no len(); give a map-style torch Dataset") from None
    if n == 0:
        raise DataError(f"{where}: empty dataset")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DataError(f"{where}: item {i} is {type(item).__name__}; expected (input, target)")
        x, y = item[0], item[1]
        try:
            x, y = torch.as_tensor(x), torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{where}: item {i} cannot be made a tensor ({e})") from None
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            raise DataError(f"{where}: item {i} has input shape {tuple(x.shape)} and target shape {tuple(y.shape)}, "
                            f"item 0 {tuple(xs[0].shape)} and {tuple(ys[0].shape)}; every item must match")
        xs.append(x)
        ys.append(y)
    x, y = torch.stack(xs), torch.stack(ys)
    for name, t in (("inputs", x), ("targets", y)):
        _check_numeric(f"{where} {name}", t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy())
    return x, y


@DATASETS.register("python")
def python_factory(root: str = "", factory: str = "") -> RawData:
    """Any torch Datasets: data.factory = "pkg.module:fn" returning (train, test) or (train, val, test), materialized into tensors."""
    if not factory:
        raise ValueError("factory: data.name = 'python' needs data.factory = 'pkg.module:function'")
    fn = _resolve_factory(factory)
    out = fn()
    if not (isinstance(out, (tuple, list)) and len(out) in (2, 3)):
        raise DataError(f"{factory}: returned {type(out).__name__}"
                        f"{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}; "
                        f"expected (train, test) or (train, val, test) torch Datasets")
    names = ["train", "test"] if len(out) == 2 else ["train", "val", "test"]
    sets = {name: _materialize(f"{factory} ({name} set)", ds) for name, ds in zip(names, out)}
    (x, y), (xt, yt) = sets["train"], sets["test"]
    ints = [not t.is_floating_point() for _, t in sets.values()]
    if len(set(ints)) > 1:
        raise DataError(f"{factory}: the sets' targets mix integer and float dtypes "
                        f"({', '.join(f'{n}: {t.dtype}' for n, (_, t) in sets.items())})")
    raw = _finish(factory, x, y, xt, yt)
    if "val" in sets:
        vx, vy = sets["val"]
        if vx.shape[1:] != x.shape[1:]:
            raise DataError(f"{factory}: val inputs have shape {tuple(vx.shape[1:])} per example, training inputs "
                            f"{tuple(x.shape[1:])}")
        if raw.task == "regression":
            vy = vy.float().reshape(len(vy), -1)
            vy = (vy - torch.tensor(raw.target_mean)) / torch.tensor(raw.target_std)
        else:
            vy = vy.long()
            if len(vy) and int(vy.max()) >= len(raw.class_names):
                raw.class_names = [str(i) for i in range(int(vy.max()) + 1)]
        raw.val_x, raw.val_y = vx, vy
    return raw


# ------------------------------------------------------------------------------------------------ folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")   # what Pillow decodes
CACHE_NAME = ".traintricks-cache.pt"


def _image_files(split_dir: Path, stats: list[tuple[str, int, int]] | None = None
                 ) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted subfolder names) and each class's image file paths (sorted); ``stats`` gets each file's
    ``("<split>/<class>/<name>", size, mtime_ns)`` (one ``os.scandir`` pass: a cached load of a large folder is
    bounded by listing it)."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir}: no class subfolders (the layout is {split_dir}/<class>/*.png|jpg)")
    files, ignored = [], []
    for c in classes:
        with os.scandir(split_dir / c) as it:
            listed = [e for e in it if e.is_file() and not e.name.startswith(".")]
        entries = sorted((e for e in listed if e.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda e: e.name)
        ignored += [f"{c}/{e.name}" for e in listed if not e.name.lower().endswith(IMAGE_SUFFIXES)]
        if not entries:
            raise DataError(f"{split_dir / c}: empty class (no image files: {'/'.join(IMAGE_SUFFIXES)})")
        files.append([e.path for e in entries])      # strings: pathlib objects cost more than the stat
        if stats is not None:
            prefix = f"{split_dir.name}/{c}/"
            for e in entries:
                st = e.stat()
                stats.append((prefix + e.name, st.st_size, st.st_mtime_ns))
    if ignored:                      # said, not silently left out (a new user's .txt and an unlisted format)
        warn(f"{split_dir}: {len(ignored)} file(s) that are not images by their suffix were left out "
             f"(e.g. {', '.join(sorted(ignored)[:3])}; images are {'/'.join(IMAGE_SUFFIXES)})")
    return classes, files


def _decode_split(split_dir: Path, classes: list[str], files: list[list[str]], image_size: int,
                  skip_bad: bool, skipped: list[str]) -> tuple[list[np.ndarray], list[int], list[Path]]:
    images, labels, paths = [], [], []
    for label, fs in enumerate(files):
        for f in fs:
            try:
                images.append(_decode(f, image_size))
            except (OSError, ValueError, SyntaxError) as e:       # PIL.UnidentifiedImageError is an OSError
                if not skip_bad:
                    raise DataError(f"{f}: unreadable or corrupt image ({e}); fix or remove it, or set "
                                    f"data.skip_bad = true to skip such files") from None
                skipped.append(str(f))
                continue
            labels.append(label)
            paths.append(f)
    return images, labels, paths


def _stack(images: list[np.ndarray], paths: list[Path], channels: int) -> torch.Tensor:
    shapes = {a.shape[:2] for a in images}
    if len(shapes) > 1:
        first = paths[0]
        other = next(p for a, p in zip(images, paths) if a.shape[:2] != images[0].shape[:2])
        h0, w0 = images[0].shape[:2]
        h1, w1 = next(a.shape[:2] for a in images if a.shape[:2] != images[0].shape[:2])
        raise DataError(f"mixed image sizes: {first} is {w0}x{h0}, {other} is {w1}x{h1}; set data.image_size "
                        f"to resize them all")
    out = [a[:, :, None].repeat(channels, 2) if a.ndim == 2 else a for a in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _scan(split_dir: Path, files: list[list[str]], image_size: int, skip_bad: bool,
          skipped: list[str]) -> tuple[list[str], list[int], list[tuple[int, int, bool]]]:
    """Every file's header (no decoding): paths, labels and (width, height, grey) after resizing; unreadable
    headers raise ``DataError`` naming the file, or are skipped with ``skip_bad``."""
    from PIL import Image
    paths, labels, info = [], [], []
    for label, fs in enumerate(files):
        for f in fs:
            try:
                with Image.open(f) as im:
                    w, h = (image_size, image_size) if image_size else im.size
                    grey = _is_grey(im)
            except (OSError, ValueError, SyntaxError) as e:
                if not skip_bad:
                    raise DataError(f"{f}: unreadable or corrupt image ({e}); fix or remove it, or set "
                                    f"data.skip_bad = true to skip such files") from None
                skipped.append(str(f))
                continue
            paths.append(str(f))
            labels.append(label)
            info.append((w, h, grey))
    return paths, labels, info


def _streamed(p: Path, classes: list[str], files: list[list[str]], test_files: list[list[str]] | None,
              image_size: int, skip_bad: bool, workers: int, max_bytes: int | None) -> Any:
    """The folder as files to stream (a :class:`~traintricks.data.streaming.StreamedRaw`), or ``None`` when
    ``max_bytes`` is given and the decoded set's float32 tensors fit in it."""
    from .streaming import StreamedRaw
    skipped: list[str] = []
    paths, labels, info = _scan(p / "train", files, image_size, skip_bad, skipped)
    t_paths, t_labels, t_info = (_scan(p / "test", test_files, image_size, skip_bad, skipped)
                                 if test_files is not None else ([], [], []))
    if not paths:
        raise DataError(f"{p / 'train'}: no readable images (skipped: {', '.join(skipped)})")
    every, shapes = paths + t_paths, info + t_info
    w, h = shapes[0][:2]
    other = next((i for i, (w1, h1, _) in enumerate(shapes) if (w1, h1) != (w, h)), None)
    if other is not None:
        w1, h1 = shapes[other][:2]
        raise DataError(f"mixed image sizes: {every[0]} is {w}x{h}, {every[other]} is {w1}x{h1}; set "
                        f"data.image_size to resize them all")
    channels = 1 if all(g for _, _, g in shapes) else 3
    if max_bytes is not None and (len(paths) + len(t_paths)) * channels * h * w * 4 <= max_bytes:
        return None
    for i, c in enumerate(classes):
        if i not in labels:
            raise DataError(f"{p / 'train' / c}: empty class (every image in it was skipped as unreadable)")
    if skipped:
        warn(f"data.skip_bad: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}")
    return StreamedRaw(paths, labels, t_paths if test_files is not None else None,
                       t_labels if test_files is not None else None, classes, (channels, h, w), image_size,
                       skip_bad, workers)


@DATASETS.register("folder")
def folder(root: str = "", image_size: int = 0, skip_bad: bool = False, stream: str | bool = "auto",
           max_memory_mb: int = 2048, workers: int = -1) -> Any:
    """Images in class subfolders (root/train/<class>/*.png|jpg, optional root/test/), decoded once into a uint8 cache, or streamed when too large."""
    import hashlib
    p = _need_root("folder", root)
    if image_size < 0:
        raise ValueError(f"image_size: must be >= 0 (0: keep the images' own size), got {image_size}")
    if stream not in ("auto", True, False):
        raise ValueError(f"stream: must be 'auto', true or false, got {stream!r}")
    if max_memory_mb < 0:
        raise ValueError(f"max_memory_mb: must be >= 0, got {max_memory_mb}")
    if workers < -1:
        raise ValueError(f"workers: must be >= 0, or -1 for min(2, CPUs), got {workers}")
    train_dir, test_dir = p / "train", p / "test"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: missing folder (the layout is {p}/train/<class>/*.png|jpg, and optionally "
                        f"{p}/test/<class>/...)")
    stats: list[tuple[str, int, int]] = []
    classes, files = _image_files(train_dir, stats)
    test_files: list[list[str]] | None = None
    if test_dir.is_dir():
        t_stats: list[tuple[str, int, int]] = []
        t_classes, t_files = _image_files(test_dir, t_stats)
        unknown = [c for c in t_classes if c not in classes]
        if unknown:
            raise DataError(f"{test_dir}: class folder(s) {unknown} not in {train_dir} (classes: {classes})")
        test_files = [t_files[t_classes.index(c)] if c in t_classes else [] for c in classes]
        order = {c: i for i, c in enumerate(classes)}      # the test files in the order of the classes' indices
        stats += sorted(t_stats, key=lambda t: (order[t[0].split("/")[1]], t[0]))
    key = hashlib.sha256(repr((image_size, skip_bad, stats)).encode()).hexdigest()
    cache = p / CACHE_NAME
    max_bytes = max_memory_mb * 2 ** 20
    if stream is True:
        return _streamed(p, classes, files, test_files, image_size, skip_bad, workers, None)
    if cache.is_file():
        try:
            # mapped privately (copy-on-write): the sizes are known before reading, and a cache replaced later
            # (a new file renamed over it) leaves this mapping intact
            c = torch.load(cache, weights_only=True, mmap=True)
        except Exception:            # an unreadable or old cache is rebuilt
            c = None
        if isinstance(c, dict) and c.get("key") == key:
            held = c["x"].numel() + (c["test_x"].numel() if c["test_x"] is not None else 0)
            if stream == "auto" and held * 4 > max_bytes:      # a cache written under a larger data.max_memory_mb
                return _streamed(p, classes, files, test_files, image_size, skip_bad, workers, None)
            if c["skipped"]:
                warn(f"data.skip_bad: skipped {len(c['skipped'])} unreadable image(s): "
                     f"{', '.join(c['skipped'])}")
            if c["test_x"] is None:
                return RawData(*_fixed_test_split(c["x"], c["y"], TEST_FRACTION), class_names=c["classes"])
            return RawData(c["x"], c["y"], c["test_x"], c["test_y"], class_names=c["classes"])
    if stream == "auto":
        out = _streamed(p, classes, files, test_files, image_size, skip_bad, workers, max_bytes)
        if out is not None:
            return out
    skipped: list[str] = []
    imgs, labels, paths = _decode_split(train_dir, classes, files, image_size, skip_bad, skipped)
    t_imgs, t_labels, t_paths = (_decode_split(test_dir, classes, test_files, image_size, skip_bad, skipped)
                                 if test_files is not None else ([], [], []))
    if not imgs:
        raise DataError(f"{train_dir}: no readable images (skipped: {', '.join(skipped)})")
    channels = 3 if any(a.ndim == 3 for a in imgs + t_imgs) else 1
    x = _stack(imgs + t_imgs, paths + t_paths, channels)
    y = torch.tensor(labels + t_labels, dtype=torch.long)
    for i, c in enumerate(classes):
        if not (y[:len(imgs)] == i).any():
            raise DataError(f"{train_dir / c}: empty class (every image in it was skipped as unreadable)")
    x, xt = x[:len(imgs)], (x[len(imgs):] if test_files is not None else None)
    y, yt = y[:len(imgs)], (y[len(imgs):] if test_files is not None else None)
    if skipped:
        warn(f"data.skip_bad: skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}")
    try:
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"key": key, "x": x, "y": y, "test_x": xt, "test_y": yt, "classes": classes,
                    "skipped": skipped}, tmp)
        tmp.replace(cache)
    except OSError as e:             # a read-only data folder: decoded every time
        warn(f"{cache}: cannot write the decoded-image cache ({e}); the images are decoded on every "
             f"load")
    if xt is None:
        return RawData(*_fixed_test_split(x, y, TEST_FRACTION), class_names=classes)
    return RawData(x, y, xt, yt, class_names=classes)
