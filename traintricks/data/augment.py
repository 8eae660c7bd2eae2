"""Data augmentation on batches of tensors (no torchvision), chosen by name through :data:`AUGMENTATIONS`.

**One calling convention** for every batch transform -- each augmentation here, :class:`Compose`, and the
``transform`` of :class:`~traintricks.data.TensorLoader`:

    aug(x, y=None, generator=None)  ->  x         when no targets are given
                                    ->  (x, y)    when they are

on a whole batch ``x`` of shape ``(N, C, H, W)`` (or ``(N, C, L)`` for 1-D signals where it makes sense) with
targets ``y`` (class indices (N,) or soft targets (N, K)), drawing its randomness per example from ``generator``
(``None``: the global generator) so that a seeded epoch replays exactly. It is torchvision's ``transforms.v2``
form (``t(images)`` or ``t(images, labels)``, the same structure back) plus the generator. Augmentations of the
images only pass ``y`` through; label-mixing ones (:class:`Mixup`, :class:`CutMix`, ``mixes_labels = True``) need
``y`` and return soft targets (N, K). The loader always calls ``transform(x, y, generator=g)``.

Augmentations that depend on *which* examples they see and *when* (:class:`AlternatingFlip`, ``uses_index = True``)
also take the keyword arguments ``index`` (the batch's dataset indices, int64 ``(N,)``) and ``epoch`` (int);
:class:`Compose` passes them on to those, and :class:`~traintricks.data.TensorLoader` supplies them.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from ..registry import Registry

AUGMENTATIONS = Registry("augmentation", section="forward pass: generalization")


def _check_generator(y, generator) -> None:
    if isinstance(y, torch.Generator):
        raise TypeError("augmentations are called aug(x, y=None, generator=None): the generator went into y; "
                        "call aug(x, generator=g) (or aug(x, y, g) with targets)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


class BatchTransform:
    """Base of the augmentations of the images only: ``aug(x, y=None, generator=None)`` returns ``x`` transformed
    (by :meth:`transform`), with ``y`` passed through when given (see the module docstring)."""

    mixes_labels = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None):
        _check_generator(y, generator)
        out = self.transform(x, generator)
        return out if y is None else (out, y)

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class RandomCrop(BatchTransform):
    """Random crop with zero padding: pad by ``padding`` on every side, then cut an input-sized window
    at a random offset per example (a random translation by up to ``padding`` pixels)."""

    def __init__(self, padding: int = 2) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.padding
        if p == 0:
            return x
        if x.ndim != 4:
            raise ValueError(f"crop needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]          # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]          # (N, 1, 1, W)
        batch = torch.arange(n)[:, None, None, None]
        chans = torch.arange(c)[None, :, None, None]
        return padded[batch, chans, rows, cols]

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding})"


class RandomFlip(BatchTransform):
    """Horizontal flip (last axis) of each example with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = torch.rand(x.shape[0], generator=generator) < self.p
        return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class AlternatingFlip(BatchTransform):
    """Alternating (derandomized) horizontal flip (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
    arXiv:2404.00498, section 3.6): example ``i`` is mirrored at epoch ``e`` iff

        b_i XOR (e mod 2) = 1,

    with ``b_i`` a fixed pseudo-random bit per example (a hash of ``i`` and ``seed``: about half the examples start
    mirrored; from a config, ``seed`` is the run's unless the entry sets it). Each example is thus seen once plain and once mirrored in every two consecutive epochs, where the
    random flip of :class:`RandomFlip` shows it the same way twice in a row with probability 1/2; the paper finds
    it better than random flipping wherever flipping helps.

    Called ``aug(x, y=None, generator=None, *, index, epoch)``: ``index`` is the batch's dataset indices (int64
    ``(N,)``) and ``epoch`` the epoch number (:class:`~traintricks.data.TensorLoader` passes both; ``generator`` is
    not used: the flips are a function of ``(seed, i, e)`` alone, so a resumed run repeats them). In a loop of your
    own over a ``DataLoader``, let the dataset return each example's index (``return x[i], y[i], i``) and call
    ``flip(xb, index=ib, epoch=epoch)`` on each batch. Raises ``TypeError`` when either is missing or ``index`` is
    not integer, and ``ValueError`` when ``index`` does not give one index per example of the batch.
    """

    uses_index = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def mask(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Which examples ``index`` are mirrored at ``epoch``: bool ``(N,)``."""
        # b_i: the lowest bit of MurmurHash3's 32-bit finalizer (fmix32) of i + seed * golden ratio, computed in
        # int64 on 32-bit values (products wrap; their low 32 bits are exact)
        m = 0xFFFFFFFF
        h = (index.to(torch.int64) + self.seed * 0x9E3779B9) & m
        h = ((h ^ (h >> 16)) * 0x85EBCA6B) & m
        h = ((h ^ (h >> 13)) * 0xC2B2AE35) & m
        return ((h ^ (h >> 16)) & 1).bool() ^ bool(epoch % 2)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                 index: torch.Tensor | None = None, epoch: int | None = None):
        _check_generator(y, generator)
        if index is None or epoch is None:
            raise TypeError("alternating_flip mirrors example i at epoch e by (i, e), so it needs the batch's dataset "
                            "indices and the epoch: call aug(x, y, index=idx, epoch=e) (TensorLoader passes both); "
                            "for a random flip use flip")
        index = torch.as_tensor(index)
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"alternating_flip: index must hold integer dataset indices, got dtype {index.dtype}")
        if index.shape != (x.shape[0],):
            raise ValueError(f"alternating_flip: index must have one dataset index per example of the batch x "
                             f"(x.shape[0] = {x.shape[0]}: shape ({x.shape[0]},)), got shape {tuple(index.shape)}; "
                             "x is a batch (N, ...), not a single example")
        m = self.mask(index, int(epoch))
        out = torch.where(m.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
        return out if y is None else (out, y)

    def __repr__(self) -> str:
        return f"AlternatingFlip(seed={self.seed})"


class RandomTranslate(RandomCrop):
    """Shift each image by a random whole number of pixels in ``[-max_shift, max_shift]`` along each axis,
    filling with zeros (the same map as a random crop of a ``max_shift``-padded image)."""

    def __init__(self, max_shift: int = 2) -> None:
        super().__init__(max_shift)

    def __repr__(self) -> str:
        return f"RandomTranslate(max_shift={self.padding})"


def _box_masks(n: int, h: int, w: int, cy: torch.Tensor, cx: torch.Tensor, bh: torch.Tensor,
               bw: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) boolean masks of the boxes with centres (cy, cx) and sizes (bh, bw), clipped to the image."""
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    y0, x0 = (cy - bh // 2).view(n, 1, 1), (cx - bw // 2).view(n, 1, 1)
    inside = (rows >= y0) & (rows < y0 + bh.view(n, 1, 1)) & (cols >= x0) & (cols < x0 + bw.view(n, 1, 1))
    return inside.unsqueeze(1)


class Cutout(BatchTransform):
    """Cutout (DeVries & Taylor 2017, arXiv:1708.04552): zero a ``size`` x ``size`` square at a uniformly
    random centre in each image (the square may extend past the border), with probability ``p``."""

    def __init__(self, size: int = 8, p: float = 1.0) -> None:
        if size < 1:
            raise ValueError(f"cutout: size must be >= 1, got {size}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"cutout: p must be in [0, 1], got {p}")
        self.size, self.p = size, p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"cutout needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        cy, cx = torch.randint(0, h, (n,), generator=generator), torch.randint(0, w, (n,), generator=generator)
        apply = (torch.rand(n, generator=generator) < self.p).view(n, 1, 1, 1)
        size = torch.full((n,), self.size)
        mask = _box_masks(n, h, w, cy, cx, size, size) & apply
        return x.masked_fill(mask, 0.0)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, p={self.p})"


class RandomErasing(BatchTransform):
    """Random erasing (Zhong et al. 2017, arXiv:1708.04896): with probability ``p`` per image, a rectangle of
    area ``s * H * W`` (``s ~ U(scale)``) and aspect ratio ``r`` (log-uniform in ``ratio``), inside the image,
    is filled with random values ``N(0, 1)`` (the data are standardized) or ``value``."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: float | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random_erasing: p must be in [0, 1], got {p}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"random_erasing: scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"random_erasing: ratio must satisfy 0 < low <= high, got {ratio}")
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"random_erasing needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        area = torch.empty(n).uniform_(*self.scale, generator=generator) * h * w
        logr = torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator)
        bh = (area * logr.exp()).sqrt().round().clamp(1, h).long()
        bw = (area / logr.exp()).sqrt().round().clamp(1, w).long()
        y0 = (torch.rand(n, generator=generator) * (h - bh + 1)).long()
        x0 = (torch.rand(n, generator=generator) * (w - bw + 1)).long()
        apply = (torch.rand(n, generator=generator) < self.p).view(n, 1, 1, 1)
        mask = _box_masks(n, h, w, y0 + bh // 2, x0 + bw // 2, bh, bw) & apply
        fill = torch.randn(x.shape, generator=generator, dtype=x.dtype) if self.value is None else self.value
        return torch.where(mask, fill, x)

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value})"


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices as float one-hot rows; soft targets (already 2-D) pass through."""
    return y.float() if y.ndim == 2 else F.one_hot(y, num_classes).float()


class Mixup:
    """Mixup (Zhang et al. 2017, arXiv:1710.09412): with ``lam ~ Beta(alpha, alpha)`` per batch and a random
    pairing ``j`` of the batch, ``x = lam * x + (1 - lam) * x[j]`` and soft targets
    ``y = lam * onehot(y) + (1 - lam) * onehot(y[j])``, which the cross-entropy loss accepts."""

    mixes_labels = True

    def __init__(self, num_classes: int, alpha: float = 0.2) -> None:
        if alpha <= 0:
            raise ValueError(f"mixup: alpha must be > 0, got {alpha}")
        self.num_classes, self.alpha = num_classes, alpha

    def _lam_perm(self, n: int, generator: torch.Generator | None) -> tuple[float, torch.Tensor]:
        # lam from Python's Beta sampler seeded by the loader's generator, so epochs replay exactly
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        lam = random.Random(seed).betavariate(self.alpha, self.alpha)
        return lam, torch.randperm(n, generator=generator)

    def _targets(self, y: torch.Tensor | None, generator) -> torch.Tensor:
        _check_generator(y, generator)
        if y is None:
            raise ValueError(f"{self!r} mixes labels: call it with the targets, aug(x, y, generator)")
        return one_hot(y, self.num_classes)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None):
        t = self._targets(y, generator)
        lam, j = self._lam_perm(x.shape[0], generator)
        return x * lam + x[j] * (1 - lam), t * lam + t[j] * (1 - lam)

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha})"


class CutMix(Mixup):
    """CutMix (Yun et al. 2019, arXiv:1905.04899): paste a box from a paired image, box area ``1 - lam`` of
    the image with ``lam ~ Beta(alpha, alpha)`` and a uniform centre (clipped at the border); the targets
    mix in proportion to the pixels actually kept, ``lam = 1 - box area / image area``."""

    def __init__(self, num_classes: int, alpha: float = 1.0) -> None:
        super().__init__(num_classes, alpha)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None):
        t = self._targets(y, generator)
        if x.ndim != 4:
            raise ValueError(f"cutmix needs images (N, C, H, W), got shape {tuple(x.shape)}")
        n, _, h, w = x.shape
        lam, j = self._lam_perm(n, generator)
        cut = math.sqrt(1.0 - lam)
        bh, bw = int(round(h * cut)), int(round(w * cut))
        cy = int(torch.randint(0, h, (1,), generator=generator))
        cx = int(torch.randint(0, w, (1,), generator=generator))
        y0, y1 = max(cy - bh // 2, 0), min(cy - bh // 2 + bh, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, w)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[j, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        return out, t * lam + t[j] * (1 - lam)

    def __repr__(self) -> str:
        return f"CutMix(alpha={self.alpha})"


class Compose:
    """Apply batch transforms in order, each called by the one convention ``aug(x, y, generator)`` (see the module
    docstring): ``compose(x, y=None, generator=None)`` returns ``x``, or ``(x, y)`` when targets are given (needed
    when one of them mixes labels: mixup, cutmix)."""

    def __init__(self, augs: list) -> None:
        self.augs = list(augs)
        self.mixes_labels = any(getattr(a, "mixes_labels", False) for a in self.augs)
        self.uses_index = any(getattr(a, "uses_index", False) for a in self.augs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None, generator: torch.Generator | None = None, *,
                 index: torch.Tensor | None = None, epoch: int | None = None):
        """``index`` and ``epoch`` go to the augmentations that use them (``uses_index``), only."""
        _check_generator(y, generator)
        for a in self.augs:
            kw = {"index": index, "epoch": epoch} if getattr(a, "uses_index", False) else {}
            if y is None:
                x = a(x, None, generator, **kw)
            else:
                x, y = a(x, y, generator, **kw)
        return x if y is None else (x, y)

    def __repr__(self) -> str:
        return f"Compose({self.augs})"


def as_spec(item: str | dict) -> dict:
    """A config's augmentation entry, ``"flip"`` or ``{name = "crop", padding = 4}``, as a dict with a name."""
    return {"name": item} if isinstance(item, str) else dict(item)


# name, class and a one-line summary; the options and their defaults are the class's
AUGMENTATIONS.register("crop", RandomCrop,
                       summary="Random crop after zero padding (random translation by up to `padding` pixels).")
AUGMENTATIONS.register("flip", RandomFlip, summary="Random horizontal flip with probability p.")
AUGMENTATIONS.register("alternating_flip", AlternatingFlip,
                       summary="Alternating flip: each example mirrored every other epoch, from a pseudo-random "
                               "start (the run's seed) (2404.00498).")
AUGMENTATIONS.register("translate", RandomTranslate, summary="Random shift by up to max_shift pixels per axis, zero fill.")
AUGMENTATIONS.register("cutout", Cutout, summary="Cutout: zero a size x size square at a random centre (1708.04552).")
AUGMENTATIONS.register("random_erasing", RandomErasing, options=("p", "scale", "ratio"),
                       summary="Random erasing: fill a random rectangle with noise, with probability p (1708.04896).")
AUGMENTATIONS.register("mixup", Mixup, summary="Mixup: convex combinations of image pairs and of their one-hot "
                                               "targets, lam ~ Beta(alpha, alpha) (1710.09412).")
AUGMENTATIONS.register("cutmix", CutMix, summary="CutMix: paste a box from a paired image, targets mixed by the "
                                                 "pasted area (1905.04899).")
