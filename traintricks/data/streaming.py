"""Image folders too large for memory, streamed from disk through ``torch.utils.data.DataLoader`` workers.

The ``folder`` source (:mod:`traintricks.data.sources`) decodes a set into one uint8 tensor when it fits; when the
float32 tensors training would hold (``N * C * H * W * 4`` bytes over every split) exceed ``data.max_memory_mb``
(``data.stream = "auto"``, the default) or when ``data.stream = true``, it returns a :class:`StreamedRaw` (file
paths and labels) instead, and :func:`~traintricks.data.datasets.load_data` makes it a :class:`StreamedSplits`:

- the same splits as in memory: the folder's ``test/`` or the fixed 20% split (permutation seeded with 0), then
  ``data.limit`` and ``data.val_size`` (permutation seeded with ``seed``), over the list of files;
- the per-channel mean and standard deviation of the training portion, estimated from a seeded sample of
  :data:`STATS_SAMPLE` training images (all of them when there are fewer; then they equal the in-memory path's);
- loaders (:class:`StreamLoader`) whose batches are the :class:`~traintricks.data.loader.TensorLoader` ones: the
  same order (seeded by ``seed`` and the epoch), decoded by Pillow in ``data.workers`` worker processes (resize and
  centre crop as in memory), collated as uint8, then in the main process standardized and augmented on the batch
  with the loader's generator, exactly as the in-memory path does. Batches are therefore the same with 0, 1 or 2
  workers, and a resumed run draws the same ones.

Only what the labels and paths need is held in memory; ``train_x`` is refused (``DataError``), ``val_x`` and
``test_x`` are decoded on first use (the report's predictions) and kept.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import warn
from .idx import DataError
from .images import decode_image
from .loader import TensorLoader

#: training images the streamed standardization statistics are estimated from (a seeded sample)
STATS_SAMPLE = 2048


def default_workers(workers: int) -> int:
    """``data.workers``: -1 (auto) is ``min(2, CPUs)``; 0 decodes in the main process."""
    if workers < -1:
        raise ValueError(f"workers: must be >= 0, or -1 for min(2, CPUs), got {workers}")
    return min(2, os.cpu_count() or 1) if workers == -1 else workers


class ImageFiles(torch.utils.data.Dataset):
    """A map-style ``Dataset`` of image files: item ``i`` is ``(image, i)`` with ``image`` a uint8 ``(C, H, W)``
    tensor decoded by Pillow (resized on the shorter side to ``image_size`` and centre-cropped when it is > 0;
    grey images repeated to 3 channels when ``shape[0] == 3``, colour images converted to grey when it is 1).

    A file that cannot be decoded raises :class:`DataError` naming it; with ``skip_bad`` the item is ``(None, i)``
    and the loader drops it from its batch with a warning naming the file. A decoded size other than ``shape``
    (the file changed since the folder was scanned) raises ``DataError`` naming the file."""

    def __init__(self, paths: Sequence[str], shape: tuple[int, int, int], image_size: int = 0,
                 skip_bad: bool = False) -> None:
        self.paths, self.shape, self.image_size, self.skip_bad = list(paths), tuple(shape), image_size, skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        path = self.paths[i]
        try:
            a = decode_image(path, self.image_size, mode="L" if self.shape[0] == 1 else None)
        except (OSError, ValueError, SyntaxError) as e:
            if self.skip_bad:
                return None, i
            raise DataError(f"{path}: unreadable or corrupt image ({e}); fix or remove it, or set "
                            f"data.skip_bad = true to skip such files") from None
        t = torch.from_numpy(a)
        t = t[None].expand(self.shape[0], -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
        if tuple(t.shape) != self.shape:
            raise DataError(f"{path}: decoded to {tuple(t.shape)}, the set's images are {self.shape} (was the file "
                            f"changed while training? else set data.image_size)")
        return t, i                                   # torch.stack makes the batch contiguous


def _collate(items: list[tuple[torch.Tensor | None, int]]) -> tuple[torch.Tensor | None, list[int], list[int]]:
    kept = [i for x, i in items if x is not None]
    bad = [i for x, i in items if x is None]
    xs = [x for x, _ in items if x is not None]
    return (torch.stack(xs) if xs else None), kept, bad


class _Batches:
    """The batch sampler a persistent ``DataLoader`` iterates: the plan of the loader's current epoch."""

    def __init__(self) -> None:
        self.plan: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


class StreamLoader(TensorLoader):
    """A :class:`~traintricks.data.loader.TensorLoader` over image files: the same batches (order, shards, ``drop_last``,
    augmentations from ``transform_from_epoch``, memory format), decoded in ``workers`` processes.

    Args:
        files: an :class:`ImageFiles` dataset; labels: its labels, ``(N,)`` int64.
        mean, std: per-channel standardization, applied to each uint8 batch as ``(x.float() - mean) / std``
            before the augmentations (as the in-memory path standardizes before them).
        workers: ``DataLoader`` worker processes (0: decode in the main process); persistent between epochs. The
            ``DataLoader`` draws its workers' seeds from a generator of its own, never from the global RNG: a run
            streamed or in memory initializes and drops out alike.
        the rest: as :class:`~traintricks.data.loader.TensorLoader`.
    """

    def __init__(self, files: ImageFiles, labels: torch.Tensor, batch_size: int, *, mean: Sequence[float],
                 std: Sequence[float], workers: int = 0, **kwargs: Any) -> None:
        super().__init__(files, labels, batch_size, **kwargs)          # type: ignore[arg-type]  (len(files) only)
        shape = (1, -1) + (1,) * (len(files.shape) - 1)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).reshape(shape)
        self.std = torch.tensor(list(std), dtype=torch.float32).reshape(shape)
        self.workers = default_workers(workers)
        self._batches = _Batches()
        self._loader: torch.utils.data.DataLoader | None = None
        self._warned: set[int] = set()

    def _data_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 2} if self.workers else {}
            self._loader = torch.utils.data.DataLoader(self.x, batch_sampler=self._batches, num_workers=self.workers,
                                                       collate_fn=_collate, generator=torch.Generator(), **extra)
        return self._loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._begin_pass()
        plan, g = self._plan()
        n = len(self.x)
        self._batches.plan = [list(range(n)[idx]) if isinstance(idx, slice) else idx.tolist() for idx in plan]
        for xb, kept, bad in self._data_loader():
            new = [i for i in bad if i not in self._warned]
            if new:
                self._warned.update(new)
                warn(f"data.skip_bad: skipped {len(new)} unreadable image(s) while streaming: "
                     f"{', '.join(self.x.paths[i] for i in new)}")
            if xb is None:
                continue
            kept_index = torch.tensor(kept, dtype=torch.long)
            yb = self.y[kept_index]
            yield self.finish_batch(((xb.float() - self.mean) / self.std).contiguous(), yb, g, kept_index)

    def decoded(self) -> torch.Tensor:
        """Every image, in order, standardized (float32 ``(N, C, H, W)``): a split materialized in memory."""
        saved = self.shuffle, self.transform, self.epoch, self._passes
        self.shuffle, self.transform = False, None
        try:
            parts = [xb for xb, _ in self]
        finally:           # not a training pass: the epoch count is left as it was
            self.shuffle, self.transform, self.epoch, self._passes = saved
        return torch.cat(parts) if parts else torch.empty(0, *self.x.shape)


@dataclass
class StreamedRaw:
    """What the ``folder`` source returns for a streamed set: files and labels per split (``test_paths is None``:
    the fixed 20% test split is taken from the training files), the decoded ``shape`` ``(C, H, W)``."""

    paths: list[str]
    labels: list[int]
    test_paths: list[str] | None
    test_labels: list[int] | None
    class_names: list[str]
    shape: tuple[int, int, int]
    image_size: int = 0
    skip_bad: bool = False
    workers: int = -1
    task: str = "classification"


class StreamedSplits:
    """Train / validation / test image files with what a model needs to know: the streamed counterpart of
    :class:`~traintricks.data.datasets.DataSplits` (same attributes: ``class_names``, ``mean``, ``std``, ``task``,
    ``num_classes``, ``input_shape``, ``train_y``, ``val_y``, ``test_y``; ``val_x`` and ``test_x`` decoded on first
    use; ``train_x`` refused). :meth:`loader` gives a :class:`StreamLoader` over a split."""

    streamed = True
    input_dtype = "uint8"
    pixel_range = (0.0, 255.0)      # the raw uint8 images' range (what the augmentation policies map to 0..1)

    def __init__(self, name: str, train: ImageFiles, train_y: torch.Tensor, val: ImageFiles, val_y: torch.Tensor,
                 test: ImageFiles, test_y: torch.Tensor, class_names: list[str], mean: list[float], std: list[float],
                 workers: int = -1, stats_sample: int = 0) -> None:
        self.name, self.class_names, self.mean, self.std = name, class_names, mean, std
        self.files = {"train": train, "val": val, "test": test}
        self.train_y, self.val_y, self.test_y = train_y, val_y, test_y
        self.workers, self.stats_sample = workers, stats_sample
        self.task = "classification"
        self.target_mean: list[float] = []
        self.target_std: list[float] = []
        self.image_size = train.image_size
        self._decoded: dict[str, torch.Tensor] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.files["train"].shape)

    def loader(self, split: str, batch_size: int, shuffle: bool = False, **kwargs: Any) -> StreamLoader:
        """A :class:`StreamLoader` over ``split`` (``"train"``, ``"val"``, ``"test"``); ``kwargs`` as
        :class:`~traintricks.data.loader.TensorLoader`'s."""
        y = {"train": self.train_y, "val": self.val_y, "test": self.test_y}[split]
        return StreamLoader(self.files[split], y, batch_size, shuffle=shuffle, mean=self.mean, std=self.std,
                            workers=self.workers, **kwargs)

    def _materialize(self, split: str) -> torch.Tensor:
        if split not in self._decoded:
            self._decoded[split] = self.loader(split, 256).decoded()
        return self._decoded[split]

    @property
    def train_x(self) -> torch.Tensor:
        raise DataError(f"{self.name}: the training images are streamed from disk (data.stream), not held in "
                        f"memory; this needs them in memory: set data.stream = false (or raise data.max_memory_mb)")

    @property
    def val_x(self) -> torch.Tensor:
        return self._materialize("val")

    @property
    def test_x(self) -> torch.Tensor:
        return self._materialize("test")


def _channel_stats(files: ImageFiles, workers: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) standard deviation of the images' values, accumulated in float64."""
    c = files.shape[0]
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    count = 0
    dl = torch.utils.data.DataLoader(files, batch_size=64, num_workers=default_workers(workers), collate_fn=_collate,
                                     generator=torch.Generator())        # the global RNG (model init) untouched
    for xb, _, _ in dl:
        if xb is None:
            continue
        v = xb.to(torch.float64).transpose(0, 1).reshape(c, -1)
        s += v.sum(1)
        ss += (v * v).sum(1)
        count += v.shape[1]
    if count == 0:
        raise DataError(f"{Path(files.paths[0]).parent.parent}: no readable training images to estimate the mean "
                        f"and standard deviation from")
    mean = s / count
    var = (ss - count * mean * mean) / max(count - 1, 1)
    std = var.clamp_min(0).sqrt().float().clamp_min(1e-8)
    return mean.float().tolist(), std.tolist()


def streamed_splits(raw: StreamedRaw, name: str, limit: int, val_size: float, seed: int) -> StreamedSplits:
    """The splits of ``load_data`` over files: the fixed test split (or the folder's own), ``limit``, the seeded
    validation split; statistics from a sample of at most :data:`STATS_SAMPLE` training images drawn with ``seed``."""
    n_all = len(raw.paths)
    paths, labels = list(raw.paths), list(raw.labels)
    if raw.test_paths is None:                        # as datasets._fixed_test_split, on indices
        perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(0)).tolist()
        n_test = int(round(n_all * 0.2))
        test_paths, test_labels = [paths[i] for i in perm[:n_test]], [labels[i] for i in perm[:n_test]]
        paths, labels = [paths[i] for i in perm[n_test:]], [labels[i] for i in perm[n_test:]]
    else:
        test_paths, test_labels = list(raw.test_paths), list(raw.test_labels or [])
    if limit:
        paths, labels = paths[:limit], labels[:limit]
    n = len(paths)
    n_val = int(val_size) if val_size >= 1 else int(round(val_size * n))
    if val_size < 0 or n_val >= n:
        raise ValueError(f"val_size {val_size} leaves no training examples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    vi, ti = perm[:n_val].sort().values.tolist(), perm[n_val:].sort().values.tolist()
    files = lambda ps: ImageFiles(ps, raw.shape, raw.image_size, raw.skip_bad)  # noqa: E731
    y = lambda ls, idx: torch.tensor([ls[i] for i in idx], dtype=torch.long)  # noqa: E731
    train = files([paths[i] for i in ti])
    k = min(STATS_SAMPLE, len(train))
    pick = (list(range(len(train))) if k == len(train) else
            torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:k].sort().values.tolist())
    mean, std = _channel_stats(files([train.paths[i] for i in pick]), raw.workers)
    return StreamedSplits(name, train, y(labels, ti), files([paths[i] for i in vi]), y(labels, vi),
                          files(test_paths), torch.tensor(test_labels, dtype=torch.long), raw.class_names, mean, std,
                          workers=raw.workers, stats_sample=k)


def split_loader(data: Any, split: str, batch_size: int, shuffle: bool = False, **kwargs: Any) -> TensorLoader:
    """The loader over ``data``'s ``split``: a :class:`StreamLoader` for streamed data, else a ``TensorLoader``
    over the split's tensors (``kwargs`` as ``TensorLoader``'s)."""
    if isinstance(data, StreamedSplits):
        return data.loader(split, batch_size, shuffle=shuffle, **kwargs)
    return TensorLoader(getattr(data, f"{split}_x"), getattr(data, f"{split}_y"), batch_size, shuffle=shuffle,
                        **kwargs)

