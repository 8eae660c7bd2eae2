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


def reliability(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> dict[str, torch.Tensor]:
    """Per-bin calibration statistics of the top-class confidence (Guo et al. 2017, arXiv:1706.04599):
    equal-width bins over (0, 1]; ``count``, mean ``confidence`` and ``accuracy`` per bin."""
    if probs.ndim != 2 or target.shape != probs.shape[:1]:
        raise ValueError(f"reliability: expected probabilities (N, K) and labels (N,), got {tuple(probs.shape)}, "
                         f"{tuple(target.shape)}")
    conf, pred = probs.max(dim=1)
    correct = (pred == target).double()
    idx = torch.clamp((conf.double() * bins).ceil().long() - 1, 0, bins - 1)
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, weights=conf.double(), minlength=bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=bins)
    safe = count.clamp_min(1)
    return {"count": count, "confidence": conf_sum / safe, "accuracy": acc_sum / safe}


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> float:
    """``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|`` over equal-width confidence bins (Naeini 2015;
    Guo et al. 2017): the average gap between how sure the model is and how often it is right."""
    r = reliability(probs, target, bins)
    return float((r["count"] / r["count"].sum() * (r["accuracy"] - r["confidence"]).abs()).sum())
