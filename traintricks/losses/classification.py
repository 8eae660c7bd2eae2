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


def class_index_target(name: str, target: torch.Tensor) -> torch.Tensor:
    """Integer class indices of any dtype as ``int64`` (``F.cross_entropy`` takes only int64 and uint8, and uint8
    fails with label smoothing); bool is refused."""
    if target.dtype == torch.bool:
        raise ValueError(f"{name}: class-index targets must be integers, got torch.bool")
    return target.long()


def check_logits_target(name: str, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None,
                        validate: bool = False, min_ndim: int = 1, max_ndim: int | None = None) -> None:
    """Shape and dtype checks of ``F.cross_entropy``'s layouts, without host synchronization:

    * logits (C,) with a class-index target () -- one unbatched example;
    * logits (N, C) or (N, C, d1, ...) with integer class indices (N,) or (N, d1, ...), or with soft targets
      (probabilities) of the logits' shape.

    Only static facts (shapes, dtypes) are checked. With ``validate=True`` the values are checked too, at the
    cost of a host synchronization: class indices in ``[0, C)`` (``ignore_index`` allowed) and finite logits
    (:class:`NonFiniteInputError`). Without it, out-of-range labels raise where the computation indexes with
    them (``IndexError``/``RuntimeError`` on the CPU, a device-side assert on a GPU), as in PyTorch."""
    if not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be floating point, got {logits.dtype}")
    if logits.ndim < max(min_ndim, 1) or (max_ndim is not None and logits.ndim > max_ndim):
        want = "(N, classes)" if max_ndim == 2 else "(N, classes, ...) or (classes,)"
        raise ValueError(f"{name}: expected logits of shape {want}, got {tuple(logits.shape)}")
    cdim = 1 if logits.ndim >= 2 else 0
    k = logits.shape[cdim]
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"{name}: soft targets must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
    else:
        class_index_target(name, target)
        expect = logits.shape[:cdim] + logits.shape[cdim + 1:]
        if target.shape != expect:
            if logits.ndim == 2 and target.ndim == 1:
                raise ValueError(f"{name}: Expected input batch_size ({logits.shape[0]}) to match target batch_size "
                                 f"({target.shape[0]})")
            raise ValueError(f"{name}: class-index targets of shape {tuple(expect)} expected for logits of shape "
                             f"{tuple(logits.shape)}, got {tuple(target.shape)}")
        if validate:
            valid = target if ignore_index is None else target[target != ignore_index]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= k):
                raise ValueError(f"{name}: target labels must be in [0, {k}), got values in "
                                 f"[{int(valid.min())}, {int(valid.max())}]")
    if validate and not bool(torch.isfinite(logits).all()):
        raise NonFiniteInputError(f"{name}: non-finite values (NaN or Inf) in the logits")


def soft_targets(target: torch.Tensor, num_classes: int, label_smoothing: float = 0.0,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """``q = (1 - eps) * t + eps / K`` with ``t`` the one-hot (or given soft) target, classes on dim 1
    (dim 0 for an unbatched target), in ``dtype`` (default: the soft target's dtype, else float32)."""
    if target.is_floating_point():
        q = target if dtype is None else target.to(dtype)
    else:
        q = F.one_hot(class_index_target("soft_targets", target).long(), num_classes)
        q = (q.movedim(-1, 1) if q.ndim > 2 else q).to(dtype or torch.get_default_dtype())
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
                  check: bool = True, validate: bool = False) -> torch.Tensor:
    """``-sum_k q_k log softmax(z)_k`` per example (see the module docstring), reduced: ``F.cross_entropy``
    with its layouts (see :func:`check_logits_target`), any integer target dtype, and class weights cast to
    the logits' dtype and device. ``check``: shape checks (no synchronization); ``validate``: value checks too."""
    if check or validate:
        check_logits_target("cross_entropy", logits, target, ignore_index, validate)
    if not target.is_floating_point():
        target = class_index_target("cross_entropy", target)
    if weight is not None and (weight.dtype != logits.dtype or weight.device != logits.device):
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


class CrossEntropy(nn.CrossEntropyLoss):
    """Softmax cross-entropy: :class:`torch.nn.CrossEntropyLoss` (a subclass with its arguments, in its order, with
    their meaning and defaults: ``(weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
    label_smoothing=0.0)``; it calls ``F.cross_entropy``), plus the notes' options, keyword-only.

    Args:
        weight: a tensor of ``K`` class weights, used as given (the ``weight`` buffer, as PyTorch's), or None.
        size_average, reduce: PyTorch's deprecated reduction flags (mapped to ``reduction`` as PyTorch does).
        ignore_index: hard targets with this value are skipped (and leave the weighted mean's denominator).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: ``eps`` in ``[0, 1]``; the target becomes ``(1 - eps) * onehot + eps / K``.
        class_weights: (keyword-only) ``K`` non-negative weights as a list or a tensor (whose dtype is kept), or
            ``"balanced"`` (then pass ``class_counts``, the training labels' per-class counts; the recipe does):
            checked, then stored as ``weight``; give either this or ``weight``.
        class_counts: (keyword-only) per-class counts for ``"balanced"``: ``w_c = N / (K * n_c)`` (ignored
            otherwise: the recipe supplies them to every loss).
        validate: (keyword-only) also check label ranges and finite logits in every call (one host
            synchronization; off by default: out-of-range labels then raise PyTorch's ``IndexError``/device assert).

    Shapes: logits (N, C), (N, C, d1, ...) or (C,); targets class indices (N,), (N, d1, ...) or () of any integer
    dtype, or probabilities of the logits' shape. The result has the logits' dtype ((N, d1, ...) for
    ``reduction="none"``); class weights are cast to the logits' dtype and device. Bad shapes, target dtypes or a
    wrong number of class weights raise PyTorch's errors (``F.cross_entropy`` checks them); a bad
    ``label_smoothing``/``reduction`` raises ``ValueError`` at construction (PyTorch: at the call), a
    non-tensor ``weight`` ``TypeError`` naming the keyword-only option meant."""

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *,
                 class_weights: Sequence[float] | torch.Tensor | str | None = None,
                 class_counts: Sequence[int] | None = None, validate: bool = False) -> None:
        if weight is not None and not isinstance(weight, torch.Tensor):
            hint = ("label_smoothing=" if isinstance(weight, (int, float)) and not isinstance(weight, bool)
                    else "class_weights=")
            raise TypeError(f"CrossEntropy(weight, size_average, ignore_index, reduce, reduction, label_smoothing) "
                            f"takes nn.CrossEntropyLoss's arguments: weight must be a tensor or None, got "
                            f"{weight!r}; give {hint}{weight!r} by name")
        if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
        if class_weights is not None:
            if weight is not None:
                raise ValueError("CrossEntropy: give class_weights or weight (PyTorch's name), not both")
            if isinstance(class_weights, str) and class_weights == "balanced":
                if class_counts is None:
                    raise ValueError("class_weights='balanced' needs class_counts (the training labels' counts)")
                weight = balanced_weights(class_counts)
            elif isinstance(class_weights, str):
                raise ValueError(f"class_weights must be a list of numbers or 'balanced', got {class_weights!r}")
            else:
                w = torch.as_tensor(class_weights)
                w = w if w.is_floating_point() else w.to(torch.get_default_dtype())
                if w.ndim != 1 or (w < 0).any():
                    raise ValueError(f"class_weights must be a list of non-negative numbers, got {class_weights}")
                weight = w
        super().__init__(weight, size_average, ignore_index, reduce, reduction, float(label_smoothing))
        check_reduction("CrossEntropy", self.reduction)
        self.validate = bool(validate)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # shapes, dtypes and the number of class weights are checked by F.cross_entropy itself, with PyTorch's
        # errors (ValueError for a batch-size mismatch, RuntimeError for the rest)
        return cross_entropy(input, target, self.label_smoothing, self.weight, self.ignore_index, self.reduction,
                             check=False, validate=self.validate)

    def extra_repr(self) -> str:
        parts = [f"label_smoothing={self.label_smoothing}"] if self.label_smoothing else []
        parts += ["weighted=True"] if self.weight is not None else []
        parts += [f"reduction={self.reduction}"] if self.reduction != "mean" else []
        parts += [f"ignore_index={self.ignore_index}"] if self.ignore_index != -100 else []
        return ", ".join(parts)


def _class_dim(logits: torch.Tensor) -> int:
    return 1 if logits.ndim >= 2 else 0


class KLDivergence(nn.Module):
    """``KL(q || p) = sum_k q_k (log q_k - log p_k)`` to soft (or one-hot, or smoothed) targets ``q``,
    ``p = softmax(logits)``; terms with ``q_k = 0`` contribute 0. ``reduction="mean"`` averages over examples
    (PyTorch's ``batchmean`` for (N, C) logits; every position of (N, C, d1, ...) logits is an example).

    Unlike :class:`torch.nn.KLDivLoss` it takes *logits* (not log-probabilities) and class-index or
    probability targets: ``KLDivergence()(z, q) == F.kl_div(log_softmax(z, 1), q, reduction="batchmean")``.
    Shapes as :class:`CrossEntropy` (no ``ignore_index``); the result has the logits' dtype. ``validate=True``
    checks label ranges and finite logits (host synchronization)."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean", *, validate: bool = False) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing, self.reduction = float(label_smoothing), check_reduction("KLDivergence", reduction)
        self.validate = bool(validate)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_target("KLDivergence", logits, target, validate=self.validate)
        c = _class_dim(logits)
        q = soft_targets(target, logits.shape[c], self.label_smoothing, dtype=logits.dtype)
        logp = torch.log_softmax(logits, dim=c)
        per = (torch.xlogy(q, q) - q * logp).sum(c)
        return _reduce(per, self.reduction)


class ConfidencePenalty(nn.Module):
    """Cross-entropy minus ``beta`` times the output entropy, ``CE(q, p) - beta * H(p)`` (Pereyra et al. 2017,
    arXiv:1701.06548). Shapes and dtypes as :class:`CrossEntropy`; ``reduction="mean"`` averages over examples."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, reduction: str = "mean", *,
                 validate: bool = False) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.beta, self.label_smoothing = float(beta), float(label_smoothing)
        self.reduction = check_reduction("ConfidencePenalty", reduction)
        self.validate = bool(validate)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_target("ConfidencePenalty", logits, target, validate=self.validate)
        ce = cross_entropy(logits, target, self.label_smoothing, reduction="none", check=False)
        logp = torch.log_softmax(logits, dim=_class_dim(logits))
        entropy = -(logp.exp() * logp).sum(_class_dim(logits))
        return _reduce(ce - self.beta * entropy, self.reduction)
