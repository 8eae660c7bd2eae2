"""Activation functions by name."""
from __future__ import annotations

from torch import nn

from ..registry import Registry

ACTIVATIONS = Registry("activation", section="forward pass")


def make_activation(name: str) -> nn.Module:
    """Build the activation registered as ``name``."""
    return ACTIVATIONS.get(name)()


@ACTIVATIONS.register("relu")
def relu() -> nn.Module:
    """ReLU, max(0, x)."""
    return nn.ReLU(inplace=True)


@ACTIVATIONS.register("leaky_relu")
def leaky_relu(negative_slope: float = 0.01) -> nn.Module:
    """Leaky ReLU, max(0, x) + slope * min(0, x)."""
    return nn.LeakyReLU(negative_slope, inplace=True)


@ACTIVATIONS.register("gelu")
def gelu() -> nn.Module:
    """GELU, x * Phi(x) (Hendrycks & Gimpel 2016, 1606.08415)."""
    return nn.GELU()


@ACTIVATIONS.register("silu")
def silu() -> nn.Module:
    """SiLU / swish, x * sigmoid(x) (1710.05941)."""
    return nn.SiLU(inplace=True)


@ACTIVATIONS.register("noisy_hardtanh")
def noisy_hardtanh(alpha: float = 1.15, c: float = 0.5) -> nn.Module:
    """Noisy hard-tanh: half-normal noise where the unit saturates, its expectation at inference (Gulcehre 2016, 1603.00391)."""
    from .noise import NoisyHardTanh
    return NoisyHardTanh(alpha, c)
