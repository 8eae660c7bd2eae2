"""Dropout (Hinton et al. 2012, arXiv:1207.0580; Srivastava et al. 2014), element-wise or per channel.

Training, with drop probability ``p`` and a mask ``m ~ Bernoulli(1 - p)``:

    y = x * m / (1 - p)          so that  E[y] = x

("inverted" dropout: the survivors are scaled up in training so that inference is the identity,
which equals the paper's rule of scaling the weights by ``1 - p`` at test time). ``mode="element"``
draws one mask value per element; ``mode="channel"`` (spatial dropout, Tompson et al. 2015,
arXiv:1411.4280) one per (sample, channel), shared over positions, for convolutional features whose
neighbouring values are correlated. Backward: ``dL/dx = dL/dy * m / (1 - p)``; only the boolean mask
is saved (1 byte per element).

The mask is drawn as PyTorch draws it on the CPU (``bernoulli_(1 - p)`` on a tensor of the input's dtype, one
value per element or per (sample, channel)), so under the same seed ``Dropout(p)`` gives exactly
``F.dropout(x, p)`` and ``Dropout(p, mode="channel")`` exactly ``F.dropout2d``/``dropout3d`` for batched inputs
(on a GPU PyTorch's fused kernel draws differently: the same distribution, other values). ``p = 1`` gives zeros
(and zero gradients) as PyTorch does.
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


def check_probability(name: str, p: float, allow_one: bool = False) -> float:
    """``p`` in ``[0, 1)`` (``[0, 1]`` with ``allow_one``), else a ``ValueError`` naming ``name``."""
    if not (0.0 <= p <= 1.0 if allow_one else 0.0 <= p < 1.0):
        raise ValueError(f"{name}: p must be in [0, 1{']' if allow_one else ')'}, got {p}")
    return float(p)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, mode: str = "element",
            generator: torch.Generator | None = None, inplace: bool = False) -> torch.Tensor:
    """Functional dropout; see the module docstring. Identity when not ``training`` or ``p == 0``; zeros when
    ``p == 1``. ``x``: any shape for ``mode="element"``, (N, C, ...) with at least one position for
    ``mode="channel"``. ``inplace`` overwrites ``x`` (as ``F.dropout(..., inplace=True)``). Raises ``ValueError``
    for ``p`` outside ``[0, 1]``, an unknown mode, or a channel-mode input without positions."""
    if mode not in ("element", "channel"):
        raise ValueError(f"dropout: mode must be 'element' or 'channel', got {mode!r}")
    check_probability("dropout", p, allow_one=True)
    if mode == "channel" and x.ndim < 3:
        raise ValueError(f"dropout(mode='channel') needs (N, C, ...) inputs with positions, got {tuple(x.shape)}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x.mul_(0.0) if inplace else x * 0.0
    shape = x.shape[:2] + (1,) * (x.ndim - 2) if mode == "channel" else x.shape
    noise = torch.empty(shape, dtype=x.dtype, device=x.device)
    # (no generator keyword at all when None: torch.compile traces that with symbolic shapes)
    noise = noise.bernoulli_(1.0 - p) if generator is None else noise.bernoulli_(1.0 - p, generator=generator)
    mask = noise.bool()
    if inplace:
        return x.mul_(mask).mul_(1.0 / (1.0 - p))
    return DropoutFunction.apply(x, mask, 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """Dropout with probability ``p``: :class:`torch.nn.Dropout` (a subclass, same arguments ``(p=0.5,
    inplace=False)``, same outputs under the same seed on the CPU), saving a boolean mask for backward.
    ``mode="channel"`` (keyword-only) drops whole channels of (N, C, ...) inputs (spatial dropout, as
    ``nn.Dropout1d/2d/3d`` on batched inputs). Identity in eval mode; zeros for ``p = 1``.

    Raises ``ValueError`` for ``p`` outside ``[0, 1]`` or an unknown ``mode``."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, mode: str = "element") -> None:
        if isinstance(inplace, str):
            raise TypeError(f"Dropout(p, inplace) takes PyTorch's arguments; give mode={inplace!r} by name")
        if mode not in ("element", "channel"):
            raise ValueError(f"Dropout: mode must be 'element' or 'channel', got {mode!r}")
        super().__init__(check_probability("Dropout", p, allow_one=True), inplace)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.mode, inplace=self.inplace)

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers); present so that every layer has it."""

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}, mode={self.mode}"
