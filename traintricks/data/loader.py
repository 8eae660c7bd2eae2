"""Batches from tensors held in memory.

A :class:`TensorLoader` shuffles with a generator seeded by ``(seed, epoch)``, so every epoch's
order and augmentation are a function of the seed and the epoch number alone: a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would. The trainer numbers the epochs
(``set_epoch``, as with ``DistributedSampler``); in a loop of your own that never calls it, each new pass over
the loader is the next epoch (a new order and new augmentations, as a shuffled ``DataLoader`` gives). With
``world_size`` K > 1 every process draws the same permutation and takes its ``batch_size`` share (``rank``) of
each global batch of ``K * batch_size``.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch


class TensorLoader:
    """Iterate over ``(x[idx], y[idx])`` batches of in-memory tensors.

    Args:
        x, y: inputs and targets, same first dimension.
        batch_size: examples per batch.
        shuffle: draw a new permutation each epoch (seeded by ``seed`` and the epoch: ``set_epoch(e)``, or, if it
            is never called, one more than the last pass's for each new pass).
        drop_last: skip the final incomplete batch.
        transform: a batch transform by the one convention of :mod:`traintricks.data.augment`, called
            ``transform(x_batch, y_batch, generator=g)`` and returning ``(x, y)``: any augmentation (crop, flip,
            cutout, ..., or mixup/cutmix, which return soft targets of shape (N, classes)) or a :class:`Compose`.
            Anything else raises ``TypeError`` naming the convention.
        memory_format: e.g. ``torch.channels_last`` for 4-D batches.
        transform_from_epoch: apply ``transform`` only from this epoch on (0-based; a late start for augmentation:
            the network first learns the plain images fast, then trains on augmented ones).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0,
                 transform: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                 memory_format: torch.memory_format | None = None, rank: int = 0, world_size: int = 1,
                 transform_from_epoch: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(x) < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(x)} examples and drop_last is set")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.transform, self.memory_format = transform, memory_format
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        if transform_from_epoch < 0:
            raise ValueError(f"transform_from_epoch must be >= 0, got {transform_from_epoch}")
        self.transform_from_epoch = transform_from_epoch
        self.epoch = 0
        self._epoch_set = False         # set_epoch called: the caller numbers the epochs
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (its order and augmentations); from then on the caller numbers them."""
        self.epoch = epoch
        self._epoch_set = True

    def _begin_pass(self) -> None:
        """Start a pass over the data: without ``set_epoch``, each pass after the first is the next epoch."""
        if not self._epoch_set and self._passes:
            self.epoch += 1
        self._passes += 1

    def __len__(self) -> int:
        n, g = len(self.x), self.batch_size * self.world_size
        return n // g if self.drop_last else -(-n // g)

    def _plan(self) -> tuple[list[slice | torch.Tensor], torch.Generator]:
        """This epoch's batches (index slices or tensors, this rank's share of each global batch) and the generator
        their augmentations draw from (the permutation, when shuffled, is drawn from it first)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.x)
        order = torch.randperm(n, generator=g) if self.shuffle else None
        if self.world_size > 1:          # per-rank augmentation randomness; the permutation above is shared
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 7919 + self.rank)
        gb = self.batch_size * self.world_size
        plan: list[slice | torch.Tensor] = []
        for b in range(len(self)):
            start = b * gb + self.rank * self.batch_size          # this rank's share of global batch b
            sl = slice(min(n, start), min(n, start + self.batch_size))
            if sl.start >= sl.stop:
                continue
            plan.append(sl if order is None else order[sl])
        return plan, g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._begin_pass()
        plan, g = self._plan()
        for idx in plan:
            yield self.batch(idx, g)

    def batch(self, idx: slice | torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples ``idx``, augmented with generator ``g`` and in the loader's memory format."""
        return self.finish_batch(self.x[idx], self.y[idx], g, idx)

    def finish_batch(self, xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator,
                     index: slice | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a fetched batch with generator ``g`` (from ``transform_from_epoch`` on) and put it in the
        loader's memory format. A transform with ``uses_index`` (alternating flip) also gets the batch's dataset
        ``index`` (a slice or int64 tensor; required then) and the loader's epoch."""
        if self.transform is not None and self.epoch >= self.transform_from_epoch:
            kw: dict = {}
            if getattr(self.transform, "uses_index", False):
                if isinstance(index, slice):
                    index = torch.arange(*index.indices(len(self.x)))
                kw = {"index": index, "epoch": self.epoch}
            out = self.transform(xb, yb, generator=g, **kw)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"TensorLoader: transform {self.transform!r} must return (x, y) when called "
                                f"transform(x, y, generator=g) (the augmentations' convention); got "
                                f"{type(out).__name__}")
            xb, yb = out
        if self.memory_format is not None and xb.ndim == 4:
            xb = xb.contiguous(memory_format=self.memory_format)
        return xb, yb
