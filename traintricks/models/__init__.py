"""Models chosen by name through :data:`MODELS`.

Every factory takes ``(in_shape, num_classes, **options)`` where ``in_shape`` is one example's
shape (``(C, H, W)`` images or ``(C, L)`` signals) and the options include the normalization layer
and activation by name, so that later techniques plug in.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..registry import Registry
from .cnn import SmallCNN
from .common import zero_init_residual
from .mlp import MLP
from .resnet import PreActBlock, PreActBottleneck, PreActResNet
from .revnet import RevNet

MODELS = Registry("model", section="models")


@MODELS.register("cnn")
def cnn(in_shape: Sequence[int], num_classes: int, widths: list[int] = (16, 32, 64),
        blocks: list[int] = (1, 2, 2), norm: str = "batchnorm", activation: str = "relu",
        norm_groups: int = 8, pool_before_norm: bool = False) -> nn.Module:
    """Small fast CNN: stages of conv3x3-norm-act separated by max pooling, global max pool (the default recipe's model); pool_before_norm pools right after each stage's last conv."""
    return SmallCNN(in_shape, num_classes, widths, blocks, norm, activation, norm_groups, pool_before_norm)


@MODELS.register("preact_resnet")
def preact_resnet(in_shape: Sequence[int], num_classes: int, blocks: list[int] = (1, 1, 1),
                  widths: list[int] = (16, 32, 64), stem_width: int = 32, bottleneck: bool = True,
                  norm: str = "batchnorm", activation: str = "relu", norm_groups: int = 8,
                  aux_heads: list[int] = (), aux_weight: float = 0.3) -> nn.Module:
    """Pre-activation ResNet v2 with bottleneck (or basic) blocks, configurable stages/blocks/widths (1603.05027); optional auxiliary heads after chosen stages."""
    return PreActResNet(in_shape, num_classes, blocks, widths, stem_width, bottleneck, norm, activation, norm_groups,
                        aux_heads, aux_weight)


@MODELS.register("revnet")
def revnet(in_shape: Sequence[int], num_classes: int, blocks: list[int] = (2, 2, 2), widths: list[int] = (16, 32, 64),
           norm: str = "batchnorm", activation: str = "relu", norm_groups: int = 8, reversible: bool = True) -> nn.Module:
    """Reversible ResNet (RevNet): block inputs reconstructed in backward, memory flat in depth (1707.04585)."""
    return RevNet(in_shape, num_classes, blocks, widths, norm, activation, norm_groups, reversible)


@MODELS.register("mlp")
def mlp(in_shape: Sequence[int], num_classes: int, hidden: list[int] = (256, 256), norm: str = "batchnorm",
        activation: str = "relu", norm_groups: int = 8, dropout: float = 0.0) -> nn.Module:
    """Multi-layer perceptron: Linear-norm-act layers on the flattened input."""
    return MLP(in_shape, num_classes, hidden, norm, activation, norm_groups, dropout)


from .regularizers import REGULARIZERS  # noqa: E402

__all__ = ["MODELS", "REGULARIZERS", "RevNet", "SmallCNN", "MLP", "PreActResNet", "PreActBlock", "PreActBottleneck", "zero_init_residual"]
