"""Error calculation (notes: *Error Calculation*): losses chosen by name through :data:`LOSSES`.

Softmax cross-entropy is the KL divergence between the target distribution ``q`` and the
softmax output ``p`` up to the target's entropy:
``CE(q, p) = -sum_k q_k log p_k = KL(q || p) + H(q)``; for one-hot targets ``H(q) = 0``.
Label smoothing (Szegedy 2016; Müller 2019, arXiv:1906.02629) replaces the one-hot target with
``q = (1 - eps) * onehot(y) + eps / K``.
"""
from __future__ import annotations

from torch import nn

from ..registry import Registry

LOSSES = Registry("loss", section="error calculation", plural="losses")


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0) -> nn.Module:
    """Softmax cross-entropy, optionally against label-smoothed targets q = (1-eps)*onehot + eps/K (1906.02629)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


__all__ = ["LOSSES", "cross_entropy"]
