"""Helpers shared by the models: layers for 1-D or 2-D inputs, norms and activations by name."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..nn import fuses_norm_activation, make_activation, make_norm


def spatial_dims(in_shape: Sequence[int], model: str) -> int:
    """Number of spatial dimensions of an input of shape (C, ...) for a convolutional model."""
    if len(in_shape) not in (2, 3):
        raise ValueError(f"model {model!r} needs inputs shaped (C, L) or (C, H, W), got {tuple(in_shape)}")
    return len(in_shape) - 1


def conv(dim: int, cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Module:
    cls = nn.Conv2d if dim == 2 else nn.Conv1d
    return cls(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


def max_pool(dim: int) -> nn.Module:
    return nn.MaxPool2d(2) if dim == 2 else nn.MaxPool1d(2)


def check_positive(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {values}")
    return [int(v) for v in values]


class NormAct(nn.Sequential):
    """Normalization followed by an activation, both chosen by name (one module when the norm fuses them)."""

    def __init__(self, channels: int, norm: str, activation: str, dim: int, groups: int) -> None:
        if fuses_norm_activation(norm):
            super().__init__(make_norm(norm, channels, dim=dim, groups=groups, activation=activation))
        else:
            super().__init__(make_norm(norm, channels, dim=dim, groups=groups), make_activation(activation))
