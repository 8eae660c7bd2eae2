"""Noise as a regularizer: additive Gaussian noise, and noisy activation functions.

**Gaussian noise** on inputs or activations in training, ``y = x + sigma * eps``, ``eps ~ N(0, 1)``
(zero mean, so ``E[y] = x``); identity at inference.

**Noisy activations** (Gulcehre, Moczulski, Denil & Bengio 2016, "Noisy Activation Functions",
arXiv:1603.00391). A hard-saturating ``h`` (here hard-tanh) is written around its linearization at 0,
``u(x) = x``, with ``Delta = h(x) - u(x)`` (zero in the linear regime), and noise is added only where
``h`` saturates, pointing back towards the linear regime (the paper's eq. 9-10, half-normal noise):

    phi(x) = alpha * h(x) + (1 - alpha) * u(x) + d(x) * sigma(x) * |eps|,   eps ~ N(0, 1)
    d(x) = -sign(x) * sign(1 - alpha),   sigma(x) = c * (sigmoid(p * Delta) - 0.5)^2

In the linear regime ``phi(x) = x``; the gradient through a saturated unit no longer vanishes
(``alpha != 1``). At inference the noise is replaced by its expectation, ``E|eps| = sqrt(2 / pi)``.
Defaults follow the paper's tanh experiments (``alpha = 1.15``, ``c = 0.5``, ``p = 1``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .dropout import _traced


class GaussianNoise(nn.Module):
    """Add ``N(0, std^2)`` noise in training; identity at inference."""

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        if not std >= 0.0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = _traced(self, x)                  # torch.fx: one node, so a traced model follows train()/eval()
        if node is not None:
            return node
        if not self.training or self.std == 0.0:
            return x
        return x + torch.randn_like(x) * self.std

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers; hence no ``device``/``dtype`` either, as ``nn.Dropout``)."""

    def extra_repr(self) -> str:
        return f"std={self.std}"


class NoisyHardTanh(nn.Module):
    """Gulcehre et al.'s noisy hard-tanh (see the module docstring)."""

    def __init__(self, alpha: float = 1.15, c: float = 0.5, p: float = 1.0) -> None:
        super().__init__()
        if c < 0:
            raise ValueError(f"NoisyHardTanh: c must be >= 0, got {c}")
        self.alpha, self.c, self.p = float(alpha), float(c), float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = _traced(self, x)
        if node is not None:
            return node
        h = x.clamp(-1.0, 1.0)
        delta = h - x
        sigma = self.c * (torch.sigmoid(self.p * delta) - 0.5).square()
        d = -torch.sign(x) * math.copysign(1.0, 1.0 - self.alpha) if self.alpha != 1.0 else torch.zeros_like(x)
        noise = torch.randn_like(x).abs() if self.training else math.sqrt(2.0 / math.pi)
        return self.alpha * h + (1.0 - self.alpha) * x + d * sigma * noise

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers; hence no ``device``/``dtype`` either, as ``nn.Hardtanh``)."""

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, c={self.c}, p={self.p}"
