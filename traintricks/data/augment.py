"""Data augmentation on batches of tensors (no torchvision), chosen by name through :data:`AUGMENTATIONS`.

Each augmentation is a callable ``aug(x, generator) -> x`` on a whole batch ``x`` of shape
``(N, C, H, W)`` (or ``(N, C, L)`` for 1-D signals where it makes sense), drawing its randomness
per example from ``generator`` so that a seeded epoch replays exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Registry

AUGMENTATIONS = Registry("augmentation", section="forward pass: generalization")


class RandomCrop:
    """Random crop with zero padding: pad by ``padding`` on every side, then cut an input-sized window
    at a random offset per example (a random translation by up to ``padding`` pixels)."""

    def __init__(self, padding: int = 2) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = padding

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
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


class RandomFlip:
    """Horizontal flip (last axis) of each example with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = torch.rand(x.shape[0], generator=generator) < self.p
        return torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class Compose:
    """Apply augmentations in order."""

    def __init__(self, augs: list) -> None:
        self.augs = list(augs)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for a in self.augs:
            x = a(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.augs})"


def as_spec(item: str | dict) -> dict:
    """A config's augmentation entry, ``"flip"`` or ``{name = "crop", padding = 4}``, as a dict with a name."""
    return {"name": item} if isinstance(item, str) else dict(item)


@AUGMENTATIONS.register("crop")
def crop(padding: int = 2) -> RandomCrop:
    """Random crop after zero padding (random translation by up to `padding` pixels)."""
    return RandomCrop(padding)


@AUGMENTATIONS.register("flip")
def flip(p: float = 0.5) -> RandomFlip:
    """Random horizontal flip with probability p."""
    return RandomFlip(p)
