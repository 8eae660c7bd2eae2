"""Softmax classification losses: cross-entropy (hard or soft targets, label smoothing, class weights),
KL divergence to soft targets, and the confidence penalty.

With ``p = softmax(z)`` and a target distribution ``q`` over ``K`` classes,

    CE(q, p) = -sum_k q_k log p_k = KL(q || p) + H(q),      H(q) = -sum_k q_k log q_k

so for a fixed target cross-entropy and KL differ by a constant, and for a one-hot target (``H = 0``)
they are equal. **Label smoothing** (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019,
arXiv:1906.02629) trains towards ``q = (1 - eps) * onehot(y) + eps / K``; minimizing CE to it is
minimizing ``KL(q || p)``, the notes' description. **Class weights** ``w`` scale each example's loss by
``w_y``; the mean is then taken over ``sum_i w_{y_i}`` (PyTorch's convention); ``"balanced"`` sets
``w_c = N / (K * n_c)`` from the training labels' class counts ``n_c``. The **confidence penalty**
(Pereyra et al. 2017, arXiv:1701.06548) subtracts ``beta * H(p)``: low-entropy (over-confident) outputs
are penalized.

Gradients are autograd's (``dCE/dz = p - q``, which the tests check).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NonFiniteInputError

REDUCTIONS = ("mean", "sum", "none")



def check_reduction(name: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def check_logits_target(name: str, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> None:
    """Shapes (N, K) logits with (N,) class indices in [0, K) or (N, K) probabilities; finite logits."""
    if logits.ndim != 2:
        raise ValueError(f"{name}: expected logits of shape (N, classes), got {tuple(logits.shape)}")
    n, k = logits.shape
    if target.ndim == 1:
        if target.shape[0] != n:
            raise ValueError(f"{name}: {n} logit rows but {target.shape[0]} targets")
        if target.dtype.is_floating_point:
            raise ValueError(f"{name}: class-index targets must be integers, got {target.dtype}")
        valid = target if ignore_index is None else target[target != ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= k):
            raise ValueError(f"{name}: target labels must be in [0, {k}), got values in "
                             f"[{int(valid.min())}, {int(valid.max())}]")
    elif target.shape != logits.shape:
        raise ValueError(f"{name}: soft targets must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteInputError(f"{name}: non-finite values (NaN or Inf) in the logits")


def soft_targets(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """``q = (1 - eps) * t + eps / K`` with ``t`` the one-hot (or given soft) target."""
    q = target.float() if target.ndim == 2 else F.one_hot(target, num_classes).float()
    return q * (1 - label_smoothing) + label_smoothing / num_classes if label_smoothing else q


def balanced_weights(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``w_c = N / (K * n_c)``: every class contributes equally to the weighted loss."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    if (counts <= 0).any():
        raise ValueError(f"balanced class weights need every class present in the training labels, got counts "
                         f"{counts.long().tolist()}")
    return counts.sum() / (len(counts) * counts)


def _reduce(loss: torch.Tensor, reduction: str, denom: torch.Tensor | float | None = None) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (denom if denom is not None else max(loss.numel(), 1))


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                  weight: torch.Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                  check: bool = True) -> torch.Tensor:
    """``-sum_k q_k log softmax(z)_k`` per example (see the module docstring), reduced."""
    if check:
        check_logits_target("cross_entropy", logits, target, ignore_index if target.ndim == 1 else None)
    k = logits.shape[1]
    logp = torch.log_softmax(logits.float(), dim=1)
    if target.ndim == 1:
        keep = target != ignore_index
        safe = torch.where(keep, target, torch.zeros_like(target))
        q = soft_targets(safe, k, label_smoothing)
        w_row = weight[safe] if weight is not None else torch.ones_like(logp[:, 0])
        if weight is not None and label_smoothing:
            # PyTorch's convention: the smoothing term is weighted per class, not per example
            per = -(1 - label_smoothing) * logp.gather(1, safe[:, None])[:, 0] * w_row \
                  - label_smoothing / k * (logp * weight).sum(1)
        else:
            per = -(q * logp).sum(1) * w_row
        per = per * keep
        denom = (w_row * keep).sum() if reduction == "mean" else None
        return _reduce(per, reduction, denom)
    q = soft_targets(target, k, label_smoothing)
    per = -(q * logp * (weight if weight is not None else 1.0)).sum(1)
    return _reduce(per, reduction)


class CrossEntropy(nn.Module):
    """Softmax cross-entropy with hard or soft targets, label smoothing and class weights.

    ``class_weights`` is a list of ``K`` weights, or ``"balanced"`` (then pass ``class_counts``, the training
    labels' per-class counts; the recipe does). ``ignore_index`` marks hard targets to skip."""

    def __init__(self, label_smoothing: float = 0.0, class_weights: Sequence[float] | str | None = None,
                 class_counts: Sequence[int] | None = None, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing, self.ignore_index = float(label_smoothing), ignore_index
        self.reduction = check_reduction("CrossEntropy", reduction)
        if class_weights == "balanced":
            if class_counts is None:
                raise ValueError("class_weights='balanced' needs class_counts (the training labels' counts)")
            w = balanced_weights(class_counts)
        elif isinstance(class_weights, str):
            raise ValueError(f"class_weights must be a list of numbers or 'balanced', got {class_weights!r}")
        elif class_weights is not None:
            w = torch.as_tensor(class_weights, dtype=torch.float32)
            if w.ndim != 1 or (w < 0).any():
                raise ValueError(f"class_weights must be a list of non-negative numbers, got {class_weights}")
        else:
            w = None
        self.register_buffer("weight", w)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.numel() != logits.shape[-1]:
            raise ValueError(f"CrossEntropy: {self.weight.numel()} class weights for {logits.shape[-1]} classes")
        return cross_entropy(logits, target, self.label_smoothing, self.weight, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}, reduction={self.reduction}"


class KLDivergence(nn.Module):
    """``KL(q || p) = sum_k q_k (log q_k - log p_k)`` to soft (or one-hot, or smoothed) targets ``q``,
    ``p = softmax(logits)``; terms with ``q_k = 0`` contribute 0. ``reduction="mean"`` averages over examples
    (PyTorch's ``batchmean``)."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing, self.reduction = float(label_smoothing), check_reduction("KLDivergence", reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_target("KLDivergence", logits, target)
        q = soft_targets(target, logits.shape[1], self.label_smoothing)
        logp = torch.log_softmax(logits.float(), dim=1)
        per = (torch.xlogy(q, q) - q * logp).sum(1)
        return _reduce(per, self.reduction)


class ConfidencePenalty(nn.Module):
    """Cross-entropy minus ``beta`` times the output entropy, ``CE(q, p) - beta * H(p)`` (1701.06548)."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)
        self.reduction = check_reduction("ConfidencePenalty", reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = cross_entropy(logits, target, self.label_smoothing, reduction="none")
        logp = torch.log_softmax(logits.float(), dim=1)
        entropy = -(logp.exp() * logp).sum(1)
        return _reduce(ce - self.beta * entropy, self.reduction)
