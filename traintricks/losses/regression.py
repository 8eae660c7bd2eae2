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

from .classification import NonFiniteInputError, check_reduction


def _pair(name: str, x: torch.Tensor, y: torch.Tensor, validate: bool = False) -> torch.Tensor:
    """The target in ``x``'s dtype: class indices (N,) for (N, K) scores become one-hot rows (by ``scatter``,
    no host synchronization; an index outside ``[0, K)`` raises there, a device assert on a GPU); any other
    target is passed on as PyTorch's losses take it (broadcast with its warning when the shapes differ)."""
    if y.ndim == 1 and x.ndim == 2 and not y.is_floating_point() and y.dtype != torch.bool:
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: {x.shape[0]} prediction rows but {y.shape[0]} class targets")
        if validate and y.numel() and (int(y.min()) < 0 or int(y.max()) >= x.shape[1]):
            raise ValueError(f"{name}: target labels must be in [0, {x.shape[1]})")
        return torch.zeros_like(x).scatter_(1, y.long()[:, None], 1.0)
    if validate and not bool(torch.isfinite(x).all()):
        raise NonFiniteInputError(f"{name}: non-finite values (NaN or Inf) in the predictions")
    return y


class L1Loss(nn.L1Loss):
    """:class:`torch.nn.L1Loss` (same arguments, outputs, gradients and errors: it is a subclass calling
    ``F.l1_loss``), also taking class indices (N,) against (N, K) scores as one-hot targets.

    ``reduction`` is checked at construction (PyTorch: at the first call). ``validate=True`` (keyword-only)
    checks label ranges and finite predictions, with a host synchronization."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", *, validate: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        check_reduction("L1Loss", self.reduction)
        self.validate = bool(validate)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(input, _pair("L1Loss", input, target, self.validate), reduction=self.reduction)


class L2Loss(nn.MSELoss):
    """Squared error ``(x - y)^2``: :class:`torch.nn.MSELoss` (a subclass: same arguments and results), also
    taking class indices (N,) against (N, K) scores as one-hot targets; ``half=True`` (keyword-only) gives
    ``0.5 * (x - y)^2``. ``validate=True`` checks label ranges and finite predictions (host synchronization)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", *, half: bool = False,
                 validate: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        check_reduction("L2Loss", self.reduction)
        self.half, self.validate = bool(half), bool(validate)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = F.mse_loss(input, _pair("L2Loss", input, target, self.validate), reduction=self.reduction)
        return out * 0.5 if self.half else out

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}, half={self.half}"


class HuberLoss(nn.HuberLoss):
    """Huber loss with threshold ``delta`` (see the module docstring): :class:`torch.nn.HuberLoss` (a subclass
    with its argument order ``(reduction, delta)``), also taking class indices (N,) against (N, K) scores as
    one-hot targets. ``validate=True`` checks label ranges and finite predictions (host synchronization)."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0, *, validate: bool = False) -> None:
        if isinstance(reduction, (int, float)) and not isinstance(reduction, bool):
            raise TypeError(f"HuberLoss(reduction, delta) takes PyTorch's argument order; got reduction={reduction!r}"
                            f" (give delta={reduction} by name)")
        super().__init__(reduction, delta)
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        check_reduction("HuberLoss", self.reduction)
        self.validate = bool(validate)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(input, _pair("HuberLoss", input, target, self.validate), reduction=self.reduction,
                            delta=self.delta)
