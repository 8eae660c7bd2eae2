"""Error calculation (notes: *Error Calculation*): losses and penalties, chosen by name through
:data:`LOSSES` (``loss.name``) and :data:`PENALTIES` (``loss.penalties``).

Every loss is a ``torch.nn.Module`` called as ``loss(logits, target)`` with class-index or soft
(N, K) targets; the math and the paper are in each module's docstring:

| file | losses |
|---|---|
| ``classification.py`` | :class:`CrossEntropy` (label smoothing, class weights), :class:`KLDivergence`, :class:`ConfidencePenalty` |
| ``regression.py`` | :class:`L1Loss`, :class:`L2Loss`, :class:`HuberLoss` |
| ``multilabel.py`` | :class:`BCEWithLogitsLoss` (one sigmoid per label, ``pos_weight``) |
| ``sinkhorn.py`` | :class:`SinkhornLoss` (entropic optimal transport with a class cost matrix) |
| ``margin.py`` | :class:`LargeMarginSoftmax` (L-Softmax) |
| ``distillation.py`` | :class:`Distillation` (temperature, T^2 scaling) |
| ``hierarchical.py`` | :class:`HierarchicalLoss` (class tree) |
| ``penalties.py`` | :class:`WeightPenalty` (L1/L2), :class:`SpectralNormPenalty` |
| ``auxiliary.py`` | :class:`AuxiliaryHeads` |
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry
from .auxiliary import AuxiliaryHeads
from .classification import (ConfidencePenalty, CrossEntropy, KLDivergence, NonFiniteInputError, balanced_weights,
                             cross_entropy, soft_targets)
from .distillation import Distillation, distillation_loss
from .hierarchical import HierarchicalLoss
from .multilabel import BCEWithLogitsLoss
from .margin import LargeMarginLoss, LargeMarginSoftmax, large_margin_logits
from .penalties import SpectralNormPenalty, WeightPenalty, WithPenalties
from .regression import HuberLoss, L1Loss, L2Loss
from .sinkhorn import SinkhornLoss, sinkhorn_plan

LOSSES = Registry("loss", section="error calculation", plural="losses")
PENALTIES = Registry("penalty", section="error calculation", plural="penalties")


# name, class, summary and the options a config may set (their defaults: the class's; class_counts is supplied)
LOSSES.register("cross_entropy", CrossEntropy, options=("label_smoothing", "class_weights", "ignore_index"),
                summary='Softmax cross-entropy; label smoothing = KL to (1-eps)*onehot + eps/K (1906.02629); class '
                        'weights or "balanced".')
LOSSES.register("kl_divergence", KLDivergence, options=("label_smoothing",),
                summary="KL(q || softmax(z)) to soft, one-hot or smoothed targets q.")
LOSSES.register("confidence_penalty", ConfidencePenalty, options=("beta", "label_smoothing"), summary="Cross-entropy "
                "minus beta times the output entropy: penalizes over-confident outputs (1701.06548).")
# iters: 50 Sinkhorn iterations in a training loss (the class's 100 is for an accurate distance)
LOSSES.register("sinkhorn", SinkhornLoss, options=("cost", "eps", "iters"), defaults={"iters": 50},
                summary="Entropic optimal-transport (Wasserstein) loss with a class ground metric, log-domain "
                        "Sinkhorn (1506.05439).")
LOSSES.register("l1", L1Loss, options=("reduction",), summary="Mean absolute error to the (one-hot) target.")
LOSSES.register("l2", L2Loss, options=("reduction",), summary="Mean squared error to the (one-hot) target.")
LOSSES.register("huber", HuberLoss, options=("delta",),
                summary="Huber loss: quadratic below delta, linear above (robust).")


@LOSSES.register("bce_with_logits")
def bce_with_logits(pos_weight: list[float] | None = None, weight: list[float] | None = None,
                    reduction: str = "mean") -> nn.Module:
    """Binary cross-entropy on logits, one sigmoid per label (multi-label); per-label pos_weight and weight."""
    import torch
    as_t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return BCEWithLogitsLoss(weight=as_t(weight), reduction=reduction, pos_weight=as_t(pos_weight))


LOSSES.register("large_margin", LargeMarginLoss, summary="Large-margin softmax (L-Softmax): target logit ||W|| ||x|| "
                "psi(theta) with margin m on the model's head (1612.02295).")


@LOSSES.register("distillation")
def distillation(model: nn.Module, load_model: Callable[[str], nn.Module], teacher: str = "",
                 temperature: float = 4.0, alpha: float = 0.9) -> nn.Module:
    """Knowledge distillation from a finished run's model (teacher = its directory): alpha*T^2*KL + (1-alpha)*CE (1503.02531).

    ``load_model(run_dir) -> nn.Module`` is supplied by the builder (the recipe loads a run's model; this package
    knows no runs), raising ``ValueError`` naming ``teacher`` for a directory that holds none."""
    if not teacher:
        raise ValueError("teacher: give the directory of a finished traintricks run (loss.teacher = \"runs/...\")")
    return Distillation(temperature, alpha, load_model(teacher), model)


@LOSSES.register("hierarchical")
def hierarchical(num_classes: int, parents: list[int] = (), weights: list[float] | None = None) -> nn.Module:
    """Hierarchical loss over a class tree given as parent indices (1709.01062)."""
    if not parents:
        raise ValueError("parents: give the class tree as a list of parent indices (classes first, root = -1)")
    return HierarchicalLoss(parents, num_classes, weights)


@PENALTIES.register("l1")
def l1_penalty(model: nn.Module, coef: float = 1e-5, include_norm_and_bias: bool = False) -> nn.Module:
    """coef * sum |w| over the weights (norm and bias parameters excluded by default)."""
    return WeightPenalty(model, l1=coef, include_norm_and_bias=include_norm_and_bias)


@PENALTIES.register("l2")
def l2_penalty(model: nn.Module, coef: float = 5e-4, include_norm_and_bias: bool = False) -> nn.Module:
    """coef/2 * sum w^2 over the weights (norm and bias parameters excluded by default)."""
    return WeightPenalty(model, l2=coef, include_norm_and_bias=include_norm_and_bias)


PENALTIES.register("spectral_norm", SpectralNormPenalty, options=("lam", "iters"), summary="lam/2 * sum of squared "
                   "largest singular values of the weights, power iteration (1705.10941).")


__all__ = ["LOSSES", "PENALTIES", "AuxiliaryHeads", "BCEWithLogitsLoss", "ConfidencePenalty", "CrossEntropy", "Distillation",
           "HierarchicalLoss", "HuberLoss", "KLDivergence", "L1Loss", "L2Loss", "LargeMarginLoss",
           "LargeMarginSoftmax", "NonFiniteInputError", "SinkhornLoss", "SpectralNormPenalty", "WeightPenalty", "WithPenalties",
           "balanced_weights", "cross_entropy", "distillation_loss", "large_margin_logits",
           "sinkhorn_plan", "soft_targets"]
