"""Normalization layers by name (notes: *Forward Pass / Convergence*).

Every factory takes ``(num_features, dim, groups)``: ``dim`` is the number of spatial dimensions
of the input (0 for ``(N, C)``, 1 for ``(N, C, L)``, 2 for ``(N, C, H, W)``) and ``groups`` is
used by group normalization only.

Batch norm (Ioffe & Szegedy 2015, arXiv:1502.03167) normalizes each channel with the batch
statistics over (N, H, W) in training and with running averages at inference; group norm
(Wu & He 2018, arXiv:1803.08494) normalizes each sample over groups of channels, the same way in
training and inference, with instance norm (G = C, Ulyanov 2016) and layer norm (G = 1, Ba 2016)
as its two ends.
"""
from __future__ import annotations

import math

from torch import nn

from ..registry import Registry

NORMS = Registry("normalization", section="forward pass: convergence")


def make_norm(name: str, num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Build the normalization layer registered as ``name`` for ``num_features`` channels."""
    return NORMS.get(name)(num_features, dim=dim, groups=groups)


@NORMS.register("batchnorm")
def batchnorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Batch normalization: per-channel batch statistics over (N, spatial) in training, running averages at inference (1502.03167)."""
    if dim == 2:
        return nn.BatchNorm2d(num_features)
    if dim in (0, 1):
        return nn.BatchNorm1d(num_features)
    raise ValueError(f"batchnorm supports 0, 1 or 2 spatial dimensions, not {dim}")


@NORMS.register("groupnorm")
def groupnorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Group normalization: per-sample statistics over groups of channels, identical in training and inference (1803.08494)."""
    g = math.gcd(num_features, groups) if num_features % groups else groups
    return nn.GroupNorm(g, num_features)


@NORMS.register("layernorm")
def layernorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Layer normalization: per-sample statistics over all channels and positions (group norm with G = 1; 1607.06450)."""
    return nn.GroupNorm(1, num_features)


@NORMS.register("instancenorm")
def instancenorm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """Instance normalization: per-sample, per-channel statistics (group norm with G = C; 1607.08022)."""
    return nn.GroupNorm(num_features, num_features)


@NORMS.register("none")
def no_norm(num_features: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """No normalization (identity), the baseline the others are compared with."""
    return nn.Identity()
