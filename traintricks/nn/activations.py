"""Activation functions by name."""
from __future__ import annotations

from torch import nn

from ..registry import Registry

ACTIVATIONS = Registry("activation", section="forward pass")


def make_activation(name: str) -> nn.Module:
    """Build the activation registered as ``name``."""
    return ACTIVATIONS.get(name)()


# torch's modules, bound in place (the models apply each activation to a fresh conv/norm output)
ACTIVATIONS.register("relu", nn.ReLU, defaults={"inplace": True}, options=(), summary="ReLU, max(0, x).")
ACTIVATIONS.register("leaky_relu", nn.LeakyReLU, defaults={"inplace": True}, options=("negative_slope",),
                     summary="Leaky ReLU, max(0, x) + slope * min(0, x).")
ACTIVATIONS.register("gelu", nn.GELU, options=(), summary="GELU, x * Phi(x) (Hendrycks & Gimpel 2016, 1606.08415).")
ACTIVATIONS.register("silu", nn.SiLU, defaults={"inplace": True}, options=(),
                     summary="SiLU / swish, x * sigmoid(x) (1710.05941).")


@ACTIVATIONS.register("noisy_hardtanh")
def noisy_hardtanh(alpha: float = 1.15, c: float = 0.5) -> nn.Module:
    """Noisy hard-tanh: half-normal noise where the unit saturates, its expectation at inference (Gulcehre 2016, 1603.00391)."""
    from .noise import NoisyHardTanh
    return NoisyHardTanh(alpha, c)
