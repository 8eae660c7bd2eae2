"""Normalization layers by name (notes: *Forward Pass / Convergence*).

Every factory takes ``(num_features, dim, groups)``: ``dim`` is the number of spatial dimensions
of the input (0 for ``(N, C)``, 1 for ``(N, C, L)``, 2 for ``(N, C, H, W)``) and ``groups`` is
used by group normalization only.

Batch norm (Ioffe & Szegedy 2015, arXiv:1502.03167) normalizes each channel with the batch
statistics over (N, H, W) in training and with running averages at inference; group norm
(Wu & He 2018, arXiv:1803.08494) normalizes each sample over groups of channels, the same way in
training and inference, with instance norm (G = C, Ulyanov 2016) and layer norm (G = 1, Ba 2016)
as its two ends. Batch renorm (Ioffe 2017, arXiv:1702.03275) corrects batch norm for small batches, and
``batchnorm_act`` fuses batch norm with the following activation. All are this package's own layers
(:mod:`.batchnorm`, :mod:`.batchrenorm`, :mod:`.groupnorm`, :mod:`.fused`).
"""
from __future__ import annotations

import math

from torch import nn

from ..registry import Registry
from .batchnorm import BatchNorm1d, BatchNorm2d
from .batchrenorm import BatchRenorm1d, BatchRenorm2d
from .fused import BatchNormAct1d, BatchNormAct2d
from .groupnorm import GroupLayerNorm, GroupNorm

NORMS = Registry("normalization", section="forward pass: convergence")

#: Running-average rate of the batch norms built by name for models: PyTorch's momentum 0.1 (the notes'
#: alpha 0.9; the notes' 0.99 keeps 37% of the initial values after 100 steps). They also use
#: ``cumulative_warmup``: rate max(0.1, 1/t), the plain average of the first 10 batches, so the estimates
#: hold no trace of their initial (0, 1) after the first batch. Without it a 14-step run of the default
#: recipe (2 epochs on 2,000 Fashion-MNIST images) evaluated at 10-40% (seeds 0-2); with it at about 60%.
MODEL_ALPHA = 0.9


def make_norm(name: str, num_features: int, dim: int = 2, groups: int = 8, activation: str | None = None) -> nn.Module:
    """Build the normalization layer registered as ``name`` for ``num_features`` channels.

    A norm that fuses its activation (``fuses_norm_activation(name)``) takes ``activation`` too."""
    factory = NORMS.get(name)
    if getattr(factory, "fuses_activation", False):
        return factory(num_features, dim=dim, groups=groups, activation=activation or "relu")
    return factory(num_features, dim=dim, groups=groups)


def fuses_norm_activation(name: str) -> bool:
    """Whether the norm registered as ``name`` applies the activation itself."""
    return bool(getattr(NORMS.get(name), "fuses_activation", False))


def _bn_cls(dim: int, one_d, two_d, name: str):
    if dim == 2:
        return two_d
    if dim in (0, 1):
        return one_d
    raise ValueError(f"{name} supports 0, 1 or 2 spatial dimensions, not {dim}")


@NORMS.register("batchnorm")
def batchnorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Batch normalization: per-channel batch statistics over (N, spatial) in training, running averages at inference (1502.03167)."""
    return _bn_cls(dim, BatchNorm1d, BatchNorm2d, "batchnorm")(num_features, alpha=MODEL_ALPHA, cumulative_warmup=True)


@NORMS.register("batchnorm_act")
def batchnorm_act(num_features: int, dim: int = 2, groups: int = 8, activation: str = "relu") -> nn.Module:
    """Batch norm and the model's activation (relu, leaky_relu or gelu) fused into one op: less memory saved for backward."""
    cls = _bn_cls(dim, BatchNormAct1d, BatchNormAct2d, "batchnorm_act")
    return cls(num_features, activation=activation, alpha=MODEL_ALPHA, cumulative_warmup=True)


batchnorm_act.fuses_activation = True


@NORMS.register("inplace_abn")
def inplace_abn(num_features: int, dim: int = 2, groups: int = 8, activation: str = "leaky_relu") -> nn.Module:
    """In-Place Activated BatchNorm: BN + leaky ReLU storing only its output, half the memory (1712.02616; activation must be leaky_relu)."""
    if activation != "leaky_relu":
        raise ValueError(f"inplace_abn inverts a leaky ReLU: set the model's activation to 'leaky_relu', not {activation!r}")
    from ..memory.inplace_abn import InPlaceABN, InPlaceABN1d
    return _bn_cls(dim, InPlaceABN1d, InPlaceABN, "inplace_abn")(num_features, alpha=MODEL_ALPHA, cumulative_warmup=True)


inplace_abn.fuses_activation = True


@NORMS.register("batchrenorm")
def batchrenorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Batch renormalization: BN with r/d corrections towards the running statistics, for small batches (1702.03275); ramp scaled to short runs (warm-up 200 steps, rmax 1->3 over 1000, dmax 0->5 over 600)."""
    cls = _bn_cls(dim, BatchRenorm1d, BatchRenorm2d, "batchrenorm")
    return cls(num_features, alpha=MODEL_ALPHA, cumulative_warmup=True, warmup_steps=200, r_ramp_steps=1000, d_ramp_steps=600)


@NORMS.register("groupnorm")
def groupnorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Group normalization: per-sample statistics over groups of channels, identical in training and inference (1803.08494)."""
    g = math.gcd(num_features, groups) if num_features % groups else groups
    return GroupNorm(g, num_features)


@NORMS.register("layernorm")
def layernorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Layer normalization: per-sample statistics over all channels and positions, per-channel affine (group norm with G = 1; 1607.06450)."""
    return GroupLayerNorm(num_features)


@NORMS.register("instancenorm")
def instancenorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Instance normalization: per-sample, per-channel statistics over positions (group norm with G = C; 1607.08022)."""
    if dim == 0:
        raise ValueError("instancenorm needs inputs with spatial positions; an (N, C) input has one value per channel")
    return GroupNorm(num_features, num_features, affine=True)


@NORMS.register("none")
def no_norm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """No normalization (identity), the baseline the others are compared with."""
    return nn.Identity()
