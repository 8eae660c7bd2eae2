"""Multi-label loss: binary cross-entropy on logits, one independent sigmoid per label (the multi-label task's
default, :mod:`traintricks.evaluation.tasks`). For logit ``z``, target ``y`` in [0, 1], label weight ``w`` and
positive-class weight ``p`` (``pos_weight``, per label)::

    loss(z, y) = -w * ( p * y * log sigmoid(z) + (1 - y) * log(1 - sigmoid(z)) )

computed in the log-sum-exp-stable form of :func:`torch.nn.functional.binary_cross_entropy_with_logits`
(``log sigmoid(z) = -softplus(-z)``). ``pos_weight > 1`` raises recall on a rare label (``p = n_neg / n_pos``
balances it).
"""
from __future__ import annotations

import torch
from torch import nn

from .classification import check_reduction


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """:class:`torch.nn.BCEWithLogitsLoss`: a subclass with the same arguments ``(weight, size_average, reduce,
    reduction, pos_weight)``, buffers (``weight``, ``pos_weight``), outputs, gradients and errors. Inputs: logits of
    any shape ``(*)`` and float targets of the same shape (integer targets raise, as in PyTorch); ``pos_weight``
    broadcasts over the last (label) dimension.

    ``reduction`` is checked at construction (PyTorch: at the first call)."""

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, reduce=None, reduction: str = "mean",
                 pos_weight: torch.Tensor | None = None) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        check_reduction("BCEWithLogitsLoss", self.reduction)
