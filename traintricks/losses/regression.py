"""Regression losses on predictions ``x`` and targets ``y`` of the same shape (or class indices, taken as
one-hot rows when ``x`` is (N, K) logits-like scores): L1 ``|x - y|``, L2 ``(x - y)^2`` (PyTorch's
``MSELoss``; ``0.5 * (x - y)^2`` with ``half=True``) and Huber (Huber 1964)

    huber_delta(r) = 0.5 * r^2               if |r| <= delta
                     delta * (|r| - 0.5 * delta)   otherwise

quadratic near zero, linear (robust to outliers) beyond ``delta``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .classification import NonFiniteInputError, _reduce, check_reduction


def _pair(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.ndim == 1 and x.ndim == 2 and not y.dtype.is_floating_point:
        if int(y.min()) < 0 or int(y.max()) >= x.shape[1]:
            raise ValueError(f"{name}: target labels must be in [0, {x.shape[1]})")
        y = F.one_hot(y, x.shape[1]).to(x.dtype)
    if x.shape != y.shape:
        raise ValueError(f"{name}: prediction shape {tuple(x.shape)} and target shape {tuple(y.shape)} differ")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteInputError(f"{name}: non-finite values (NaN or Inf) in the predictions")
    return y.to(x.dtype)


class L1Loss(nn.Module):
    """Mean (or sum, or per-element) absolute error ``|x - y|``."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction("L1Loss", reduction)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _reduce((x - _pair("L1Loss", x, y)).abs(), self.reduction)


class L2Loss(nn.Module):
    """Mean (or sum, or per-element) squared error ``(x - y)^2`` (times 0.5 with ``half``)."""

    def __init__(self, reduction: str = "mean", half: bool = False) -> None:
        super().__init__()
        self.reduction, self.half = check_reduction("L2Loss", reduction), half

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sq = (x - _pair("L2Loss", x, y)).square()
        return _reduce(sq * 0.5 if self.half else sq, self.reduction)


class HuberLoss(nn.Module):
    """Huber loss with threshold ``delta`` (see the module docstring)."""

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.delta, self.reduction = float(delta), check_reduction("HuberLoss", reduction)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = (x - _pair("HuberLoss", x, y)).abs()
        d = self.delta
        return _reduce(torch.where(r <= d, 0.5 * r.square(), d * (r - 0.5 * d)), self.reduction)
