"""Optimizers by name (the classes and their update rules: :mod:`.first_order`, :mod:`.large_batch`,
:mod:`.hypergradient`, :mod:`.second_order`).

A registered name has the defaults of its class, read from the class's signature (``_d``): one set, so
``OPTIMIZERS.get("sgd")(params, lr)`` is ``SGD(params, lr)`` (plain SGD, momentum 0, as ``torch.optim.SGD``);
the default recipe asks for momentum 0.9 and Nesterov explicitly (``traintricks.config.DEFAULTS``). The
factories add the config's range checks, whose messages start with the option's name so a config error
names the key (``optim.momentum``).
"""
from __future__ import annotations

import inspect
from typing import Iterable

import torch
from torch import nn

from ..registry import Registry
from .first_order import SGD, Adagrad, Adam, AdamW, RMSprop
from .hypergradient import AdamHD, SGDHD
from .large_batch import LAMB, LARS
from .second_order import Newton, SaddleFreeNewton

OPTIMIZERS = Registry("optimizer", section="weight update")


def _d(cls: type, name: str):
    """The default of ``cls``'s constructor argument ``name``."""
    return inspect.signature(cls).parameters[name].default


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
def sgd(params: Iterable, lr: float, momentum: float = _d(SGD, "momentum"), nesterov: bool = _d(SGD, "nesterov"),
        weight_decay: float = _d(SGD, "weight_decay")) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum: b <- mu*b + g; theta <- theta - lr*(g + mu*b if nesterov else b)."""
    _check(lr, weight_decay)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0 (set optim.momentum, e.g. 0.9)")
    return SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Iterable, lr: float, betas: list[float] = _d(Adam, "betas"), eps: float = _d(Adam, "eps"),
         weight_decay: float = _d(Adam, "weight_decay")) -> torch.optim.Optimizer:
    """Adam: bias-corrected moment estimates m/(sqrt(v)+eps) (1412.6980); weight decay added to the gradient."""
    _check(lr, weight_decay)
    return Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, lr: float, betas: list[float] = _d(AdamW, "betas"), eps: float = _d(AdamW, "eps"),
          weight_decay: float = _d(AdamW, "weight_decay")) -> torch.optim.Optimizer:
    """AdamW: Adam with decoupled weight decay theta <- theta - lr*wd*theta (1711.05101)."""
    _check(lr, weight_decay)
    return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adagrad")
def adagrad(params: Iterable, lr: float, lr_decay: float = _d(Adagrad, "lr_decay"), eps: float = _d(Adagrad, "eps"),
            weight_decay: float = _d(Adagrad, "weight_decay")) -> torch.optim.Optimizer:
    """AdaGrad: per-coordinate rates lr/sqrt(sum of squared gradients) (Duchi 2011)."""
    _check(lr, weight_decay)
    return Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params: Iterable, lr: float, alpha: float = _d(RMSprop, "alpha"), eps: float = _d(RMSprop, "eps"),
            momentum: float = _d(RMSprop, "momentum"), centered: bool = _d(RMSprop, "centered"),
            weight_decay: float = _d(RMSprop, "weight_decay")) -> torch.optim.Optimizer:
    """RMSProp: divide by a running RMS of the gradients (Hinton, lecture 6e)."""
    _check(lr, weight_decay)
    return RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered, weight_decay=weight_decay)


@OPTIMIZERS.register("lars")
def lars(params: Iterable, lr: float, momentum: float = _d(LARS, "momentum"), weight_decay: float = _d(LARS, "weight_decay"),
         trust_coefficient: float = _d(LARS, "trust_coefficient")) -> torch.optim.Optimizer:
    """LARS: layer-wise trust ratio eta*||w||/(||g|| + wd*||w||) for large batches (1708.03888)."""
    _check(lr, weight_decay)
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)


@OPTIMIZERS.register("lamb")
def lamb(params: Iterable, lr: float, betas: list[float] = _d(LAMB, "betas"), eps: float = _d(LAMB, "eps"),
         weight_decay: float = _d(LAMB, "weight_decay")) -> torch.optim.Optimizer:
    """LAMB: Adam direction scaled per layer by ||w||/||r|| for large batches (1904.00962)."""
    _check(lr, weight_decay)
    return LAMB(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd_hd")
def sgd_hd(params: Iterable, lr: float, hypergrad_lr: float = _d(SGDHD, "hypergrad_lr"),
           weight_decay: float = _d(SGDHD, "weight_decay")) -> torch.optim.Optimizer:
    """SGD with hypergradient descent on one global learning rate (1703.04782)."""
    _check(lr, weight_decay)
    return SGDHD(_flat(params), lr=lr, hypergrad_lr=hypergrad_lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adam_hd")
def adam_hd(params: Iterable, lr: float, betas: list[float] = _d(AdamHD, "betas"),
            hypergrad_lr: float = _d(AdamHD, "hypergrad_lr"), weight_decay: float = _d(AdamHD, "weight_decay")) -> torch.optim.Optimizer:
    """Adam with hypergradient descent on one global learning rate (1703.04782)."""
    _check(lr, weight_decay)
    return AdamHD(_flat(params), lr=lr, betas=betas, hypergrad_lr=hypergrad_lr, weight_decay=weight_decay)


@OPTIMIZERS.register("newton")
def newton(params: Iterable, lr: float, damping: float = _d(Newton, "damping"), krylov_dim: int = _d(Newton, "krylov_dim")) -> torch.optim.Optimizer:
    """Damped Newton in a Krylov subspace from Hessian-vector products (small models only)."""
    _check(lr, 0.0)
    return Newton(_flat(params), lr=lr, damping=damping, krylov_dim=krylov_dim)


@OPTIMIZERS.register("saddle_free_newton")
def saddle_free_newton(params: Iterable, lr: float, damping: float = _d(SaddleFreeNewton, "damping"),
                       krylov_dim: int = _d(SaddleFreeNewton, "krylov_dim")) -> torch.optim.Optimizer:
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
