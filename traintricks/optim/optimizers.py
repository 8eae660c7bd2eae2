"""Optimizers by name (the classes and their update rules: :mod:`.first_order`, :mod:`.large_batch`,
:mod:`.hypergradient`, :mod:`.second_order`).

A registered name is its class bound once with a summary and the options a config may set; their defaults are
the class's own (one set), so ``OPTIMIZERS.get("sgd")(params, lr)`` is ``SGD(params, lr)`` (plain SGD, momentum
0, as ``torch.optim.SGD``); the default recipe asks for momentum 0.9 and Nesterov explicitly
(``traintricks.config.DEFAULTS``). The registry's builder (:func:`build_optimizer`) adds the config's range
checks, whose messages start with the option's name so a config error names the key (``optim.momentum``).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..registry import Registry
from .first_order import SGD, Adagrad, Adam, AdamW, RMSprop
from .hypergradient import AdamHD, SGDHD
from .large_batch import LAMB, LARS
from .sam import SAM
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


# one parameter group: these share one rate (or one Krylov space) across all tensors
_ONE_GROUP = (SGDHD, AdamHD, Newton, SaddleFreeNewton)


def build_optimizer(cls: type, params: Iterable, lr: float, **options) -> torch.optim.Optimizer:
    """The registry's builder: the config's range checks (messages start with the option's name, so a config error
    names the key, ``optim.momentum``), one parameter group for the optimizers in ``_ONE_GROUP``, then
    ``cls(params, lr=lr, **options)``."""
    _check(lr, options.get("weight_decay", 0.0))
    if "nesterov" in options or cls is SGD:
        momentum, nesterov = options.get("momentum", 0.0), options.get("nesterov", False)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0 (set optim.momentum, e.g. 0.9)")
    return cls(_flat(params) if issubclass(cls, _ONE_GROUP) else params, lr=lr, **options)


OPTIMIZERS.builder = build_optimizer


def _reg(name: str, cls: type, summary: str, *options: str, **kw) -> None:
    OPTIMIZERS.register(name, cls, summary=summary, options=options, build=True, **kw)


# name, class, summary, the options a config may set (their defaults: the class's)
_reg("sgd", SGD, "SGD with (Nesterov) momentum: b <- mu*b + g; theta <- theta - lr*(g + mu*b if nesterov else b).",
     "momentum", "nesterov", "weight_decay")
_reg("adam", Adam, "Adam: bias-corrected moment estimates m/(sqrt(v)+eps) (1412.6980); weight decay added to the "
     "gradient.", "betas", "eps", "weight_decay")
_reg("adamw", AdamW, "AdamW: Adam with decoupled weight decay theta <- theta - lr*wd*theta (1711.05101).",
     "betas", "eps", "weight_decay")
_reg("adagrad", Adagrad, "AdaGrad: per-coordinate rates lr/sqrt(sum of squared gradients) (Duchi 2011).",
     "lr_decay", "eps", "weight_decay")
_reg("rmsprop", RMSprop, "RMSProp: divide by a running RMS of the gradients (Hinton, lecture 6e).",
     "alpha", "eps", "momentum", "centered", "weight_decay")
_reg("lars", LARS, "LARS: layer-wise trust ratio eta*||w||/(||g|| + wd*||w||) for large batches (1708.03888).",
     "momentum", "weight_decay", "trust_coefficient")
_reg("lamb", LAMB, "LAMB: Adam direction scaled per layer by ||w||/||r|| for large batches (1904.00962).",
     "betas", "eps", "weight_decay")
_reg("sgd_hd", SGDHD, "SGD with hypergradient descent on one global learning rate (1703.04782).",
     "hypergrad_lr", "weight_decay", capabilities=("one_group",))
_reg("adam_hd", AdamHD, "Adam with hypergradient descent on one global learning rate (1703.04782).",
     "betas", "hypergrad_lr", "weight_decay", capabilities=("one_group",))
_reg("newton", Newton, "Damped Newton in a Krylov subspace from Hessian-vector products (small models only).",
     "damping", "krylov_dim", capabilities=("one_group", "closure"))
_reg("saddle_free_newton", SaddleFreeNewton, "Saddle-free Newton: |H| in a Krylov subspace, escapes saddles "
     "(1406.2572; small models only).", "damping", "krylov_dim", capabilities=("one_group", "closure"))


def sam(params: Iterable, lr: float, base: str = "sgd", rho: float = 0.05, adaptive: bool = False,
        eta: float = 0.01, momentum: float | None = None, nesterov: bool | None = None, weight_decay: float = 0.0,
        betas: list[float] | None = None, eps: float | None = None, model: nn.Module | None = None) -> SAM:
    """SAM / ASAM (2010.01412, 2102.11600) around the registered optimizer ``base``, built with ``lr`` and the base
    options given here (``momentum``, ``nesterov``, ``weight_decay``, ``betas``, ``eps``; ``None``: the base's own
    default; an option the base does not take raises ``TypeError`` naming it). ``model`` (supplied by the recipe):
    its batch-norm statistics are taken from the first pass only (:class:`~traintricks.optim.sam.SAM`)."""
    if base not in OPTIMIZERS or base == "sam":
        raise ValueError(f"base must be a first-order optimizer's name, got {base!r}; choose one of: "
                         f"{', '.join(n for n in OPTIMIZERS.names() if n != 'sam')}")
    entry = OPTIMIZERS.entry(base)
    if "closure" in entry.capabilities:
        raise ValueError(f"base {base!r} computes its own gradients from a closure; SAM needs a first-order optimizer")
    given = dict(momentum=momentum, nesterov=nesterov, betas=tuple(betas) if betas is not None else None, eps=eps)
    opts = {k: v for k, v in given.items() if v is not None}
    bad = sorted(set(opts) - set(entry.options()))
    if bad:
        raise TypeError(f"{bad[0]}: optimizer {base!r} takes no option {bad[0]!r} (its options: "
                        f"{', '.join(entry.options())})")
    if "weight_decay" in entry.options():
        opts["weight_decay"] = weight_decay
    elif weight_decay:
        raise TypeError(f"weight_decay: optimizer {base!r} takes no weight decay")
    return SAM(params, entry, rho=rho, adaptive=adaptive, eta=eta, model=model, lr=lr, **opts)


OPTIMIZERS.register("sam", sam, summary="SAM / ASAM: the base optimizer's step with the gradient at w + rho*g/||g|| "
                                        "(adaptive: rho*T^2 g/||T g||, T = |w| + eta); 2010.01412, 2102.11600.")


def _flat(params: Iterable) -> list:
    """One parameter group: these optimizers share one rate (or one Krylov space) across all tensors,
    so the recipe's decay/no-decay groups are merged (their weight decay is the optimizer's own)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return [p for g in params for p in g["params"]]
    return params
