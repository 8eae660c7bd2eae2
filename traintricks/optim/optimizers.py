"""Optimizers by name.

SGD with momentum, in the notes' form ``V <- mu V - lr g``, ``theta <- theta + V``, is PyTorch's
``v <- mu v + g``, ``theta <- theta - lr v`` with ``V = -lr v`` (identical while lr is constant).
Adam: Kingma & Ba 2015 (arXiv:1412.6980); AdamW: decoupled weight decay, Loshchilov & Hutter 2019
(arXiv:1711.05101).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..registry import Registry

OPTIMIZERS = Registry("optimizer", section="weight update")


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed group and an undecayed one.

    Parameters with fewer than two dimensions (biases, normalization scales and shifts) get no
    weight decay unless ``decay_norm_and_bias`` ("no bias decay", He et al. 2018, 1812.01187).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 or decay_norm_and_bias else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _check(lr: float, weight_decay: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, lr: float, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum: v <- mu*v + g; theta <- theta - lr*(g + mu*v if nesterov else v)."""
    _check(lr, weight_decay)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, foreach=True)


def _betas(betas: list[float]) -> tuple[float, float]:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    return float(betas[0]), float(betas[1])


@OPTIMIZERS.register("adam")
def adam(params: Iterable, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam: bias-corrected moment estimates m/(sqrt(v)+eps) (1412.6980); weight decay added to the gradient."""
    _check(lr, weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=_betas(betas), eps=eps, weight_decay=weight_decay,
                            foreach=True)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay theta <- theta - lr*wd*theta (1711.05101)."""
    _check(lr, weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=_betas(betas), eps=eps, weight_decay=weight_decay,
                             foreach=True)
