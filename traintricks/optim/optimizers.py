"""Optimizers by name (the classes and their update rules: :mod:`.first_order`, :mod:`.large_batch`,
:mod:`.hypergradient`, :mod:`.second_order`)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..registry import Registry
from .first_order import SGD, Adagrad, Adam, AdamW, RMSprop
from .hypergradient import AdamHD, SGDHD
from .large_batch import LAMB, LARS
from .second_order import Newton, SaddleFreeNewton

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
    """SGD with (Nesterov) momentum: b <- mu*b + g; theta <- theta - lr*(g + mu*b if nesterov else b)."""
    _check(lr, weight_decay)
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    return SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Iterable, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam: bias-corrected moment estimates m/(sqrt(v)+eps) (1412.6980); weight decay added to the gradient."""
    _check(lr, weight_decay)
    return Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay theta <- theta - lr*wd*theta (1711.05101)."""
    _check(lr, weight_decay)
    return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def adagrad(params: Iterable, lr: float, lr_decay: float = 0.0, eps: float = 1e-10,
            weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdaGrad: per-coordinate rates lr/sqrt(sum of squared gradients) (Duchi 2011)."""
    _check(lr, weight_decay)
    return Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Iterable, lr: float, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            centered: bool = False, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """RMSProp: divide by a running RMS of the gradients (Hinton, lecture 6e)."""
    _check(lr, weight_decay)
    return RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered, weight_decay=weight_decay)


@OPTIMIZERS.register("lars")
def lars(params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
         trust_coefficient: float = 0.001) -> torch.optim.Optimizer:
    """LARS: layer-wise trust ratio eta*||w||/(||g|| + wd*||w||) for large batches (1708.03888)."""
    _check(lr, weight_decay)
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)


@OPTIMIZERS.register("lamb")
def lamb(params: Iterable, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-6,
         weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """LAMB: Adam direction scaled per layer by ||w||/||r|| for large batches (1904.00962)."""
    _check(lr, weight_decay)
    return LAMB(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd_hd")
def sgd_hd(params: Iterable, lr: float, hypergrad_lr: float = 1e-4, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with hypergradient descent on one global learning rate (1703.04782)."""
    _check(lr, weight_decay)
    return SGDHD(_flat(params), lr=lr, hypergrad_lr=hypergrad_lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adam_hd")
def adam_hd(params: Iterable, lr: float, betas: list[float] = (0.9, 0.999), hypergrad_lr: float = 1e-7,
            weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with hypergradient descent on one global learning rate (1703.04782)."""
    _check(lr, weight_decay)
    return AdamHD(_flat(params), lr=lr, betas=betas, hypergrad_lr=hypergrad_lr, weight_decay=weight_decay)


@OPTIMIZERS.register("newton")
def newton(params: Iterable, lr: float, damping: float = 1e-3, krylov_dim: int = 50) -> torch.optim.Optimizer:
    """Damped Newton in a Krylov subspace from Hessian-vector products (small models only)."""
    _check(lr, 0.0)
    return Newton(_flat(params), lr=lr, damping=damping, krylov_dim=krylov_dim)


@OPTIMIZERS.register("saddle_free_newton")
def saddle_free_newton(params: Iterable, lr: float, damping: float = 1e-3, krylov_dim: int = 50) -> torch.optim.Optimizer:
    """Saddle-free Newton: |H| in a Krylov subspace, escapes saddles (1406.2572; small models only)."""
    _check(lr, 0.0)
    return SaddleFreeNewton(_flat(params), lr=lr, damping=damping, krylov_dim=krylov_dim)


def _flat(params: Iterable) -> list:
    """One parameter group: these optimizers share one rate (or one Krylov space) across all tensors,
    so the recipe's decay/no-decay groups are merged (their weight decay is the optimizer's own)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return [p for g in params for p in g["params"]]
    return params
