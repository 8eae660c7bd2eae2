"""Classification metrics."""
from __future__ import annotations

import torch


def correct_count(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of rows whose arg-max equals the target class (hard labels) or the target's arg-max (soft
    labels, same shape as ``logits``), as a 0-d tensor (no device synchronization)."""
    if target.ndim == logits.ndim:
        target = target.argmax(dim=-1)
    return (logits.detach().argmax(dim=-1) == target).sum()


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows classified correctly (see :func:`correct_count`)."""
    return correct_count(logits, target).item() / max(1, logits.shape[0])
