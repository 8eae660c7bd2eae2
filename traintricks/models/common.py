"""Helpers shared by the models: layers for 1-D or 2-D inputs, norms and activations by name."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..nn import fuses_norm_activation, make_activation, make_norm


def spatial_dims(in_shape: Sequence[int], model: str) -> int:
    """Number of spatial dimensions of an input of shape (C, ...) for a convolutional model."""
    if len(in_shape) not in (2, 3):
        raise ValueError(f"model {model!r} needs inputs shaped (C, L) or (C, H, W), got {tuple(in_shape)}; for flat "
                         f"feature vectors use model.name = \"mlp\"")
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


def zero_init_residual(model: nn.Module) -> int:
    """Make every residual block start as the identity ("zero gamma": Goyal et al. 2017, arXiv:1706.02677; He et al.
    2019, "Bag of Tricks", arXiv:1812.01187) and return how many branches were zeroed (0 when the model has no
    residual additions a zero can silence). :func:`traintricks.surgery.zero_init_residual` on any model: in each
    residual branch ``y = x + f(x)`` found by tracing, the parameterized module nearest to the branch's end is
    zeroed.

    In a post-activation (v1) block the branch ends with a batch norm and zeroing its gamma makes ``y = x``. In the
    pre-activation blocks used here the branch ends ``norm -> act -> conv``: zeroing that norm's gamma and beta would
    also silence the branch, but the activation then sees exactly 0 where ReLU's derivative is 0, so gamma and beta
    would get no gradient and the branch would stay dead (our test saw exactly this). The equivalent that learns is
    to zero the branch's last convolution (the gradient of a weight is its input times the upstream gradient, not
    zero), which is what is done when the branch ends with a convolution or linear layer."""
    from ..surgery import NothingToChangeError, zero_init_residual as surgery_zero_init
    try:
        return len(surgery_zero_init(model))
    except NothingToChangeError:
        return 0
