"""Classification metrics."""
from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the target class (hard labels) or the target's arg-max (soft)."""
    if target.ndim == logits.ndim:
        target = target.argmax(dim=-1)
    return (logits.argmax(dim=-1) == target).float().mean().item()
