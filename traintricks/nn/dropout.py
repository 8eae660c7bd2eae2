"""Dropout (Hinton et al. 2012, arXiv:1207.0580; Srivastava et al. 2014), element-wise or per channel.

Training, with drop probability ``p`` and a mask ``m ~ Bernoulli(1 - p)``:

    y = x * m / (1 - p)          so that  E[y] = x

("inverted" dropout: the survivors are scaled up in training so that inference is the identity,
which equals the paper's rule of scaling the weights by ``1 - p`` at test time). ``mode="element"``
draws one mask value per element; ``mode="channel"`` (spatial dropout, Tompson et al. 2015,
arXiv:1411.4280) one per (sample, channel), shared over positions, for convolutional features whose
neighbouring values are correlated. Backward: ``dL/dx = dL/dy * m / (1 - p)``; only the boolean mask
is saved (1 byte per element).
"""
from __future__ import annotations

import torch
from torch import nn


class DropoutFunction(torch.autograd.Function):
    """``y = x * mask * scale`` with a precomputed boolean mask; saves the mask only."""

    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * mask * scale

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved_tensors
        return dy * mask * ctx.scale, None, None


def check_probability(name: str, p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: p must be in [0, 1), got {p}")
    return float(p)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, mode: str = "element",
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Functional dropout; see the module docstring. Identity when not ``training`` or ``p == 0``."""
    if mode not in ("element", "channel"):
        raise ValueError(f"dropout: mode must be 'element' or 'channel', got {mode!r}")
    check_probability("dropout", p)
    if not training or p == 0.0:
        return x
    if mode == "channel":
        if x.ndim < 3:
            raise ValueError(f"dropout(mode='channel') needs (N, C, ...) inputs with positions, got {tuple(x.shape)}")
        shape = x.shape[:2] + (1,) * (x.ndim - 2)
    else:
        shape = x.shape
    if generator is None:   # (no generator keyword at all: torch.compile traces that with symbolic shapes)
        mask = torch.rand(shape, device=x.device) >= p
    else:
        mask = torch.rand(shape, device=x.device, generator=generator) >= p
    return DropoutFunction.apply(x, mask, 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Dropout with probability ``p`` (element-wise, or per channel with ``mode="channel"``); identity in eval."""

    def __init__(self, p: float = 0.5, mode: str = "element") -> None:
        super().__init__()
        if mode not in ("element", "channel"):
            raise ValueError(f"Dropout: mode must be 'element' or 'channel', got {mode!r}")
        self.p, self.mode = check_probability("Dropout", p), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.mode)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"
