"""Optimizers by name (the classes and their update rules: :mod:`.first_order`, :mod:`.large_batch`,
:mod:`.hypergradient`, :mod:`.second_order`).

A registered name is its class bound once with a summary and the options a config may set; their defaults are
the class's own (one set), so ``OPTIMIZERS.get("sgd")(params, lr)`` is ``SGD(params, lr)`` (plain SGD, momentum
0, as ``torch.optim.SGD``); the default recipe asks for momentum 0.9 and Nesterov explicitly
(``traintricks.config.DEFAULTS``). The registry's builder (:func:`build_optimizer`) adds the config's range
checks, whose messages start with the option's name so a config error names the key (``optim.momentum``).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..registry import Registry
from .first_order import SGD, Adagrad, Adam, AdamW, RMSprop
from .hypergradient import AdamHD, SGDHD
from .lookahead import Lookahead
from .large_batch import LAMB, LARS
from .sam import SAM
from .second_order import Newton, SaddleFreeNewton

OPTIMIZERS = Registry("optimizer", section="weight update")
#: optimizer wrappers (config ``optim.wrappers = ["lookahead"]``): ``entry(optimizer, **options)`` wraps the built
#: optimizer (the list in order: the second wraps the first); schedules are built on the outermost one
OPTIMIZER_WRAPPERS = Registry("optimizer wrapper", section="weight update")


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False,
                 rules: Sequence[Mapping[str, Any]] = (), layer_decay: float | None = None,
                 lr: float | None = None) -> list[dict]:
    """Split ``model``'s trainable parameters into groups by weight decay and, for fine-tuning, by learning rate.

    **Weight decay**: parameters with fewer than two dimensions (biases, normalization scales and shifts) get no
    weight decay unless ``decay_norm_and_bias`` ("no bias decay", He et al. 2018, 1812.01187).

    **Layer-wise learning rates** (discriminative fine-tuning, Howard & Ruder 2018, arXiv:1801.06146; layer decay
    as in BEiT, Bao et al. 2021, arXiv:2106.08254): each parameter's rate is ``lr * m`` with

        m = rule.lr_mult * layer_decay ** depth

    - ``rules``: ``[{"match": "head.*", "lr_mult": 10}, {"match": "layer1.*", "lr_mult": 0.1, "weight_decay": 0}]``,
      each ``match`` an ``fnmatch`` glob on the parameter's name (``model.named_parameters()``); the first rule
      that matches a parameter applies (``lr_mult`` default 1; ``weight_decay``, when given, replaces the decay of
      the parameters it matches, norms and biases included); a parameter no rule matches keeps ``lr_mult = 1``.
    - ``layer_decay`` in ``(0, 1]``: ``depth`` counts the *layers* above the parameter's layer, in module order.
      A layer is a module holding a parameter of two or more dimensions (a convolution, a linear map, an
      embedding); a parameter of fewer dimensions (norm scale/shift) belongs to the last such module before it
      in ``model.named_parameters()`` order (the first layer when none precedes it). The last layer (the head)
      has depth 0 and keeps ``lr``.

    Groups with the same ``(lr_mult, weight_decay)`` are merged; each group with a multiplier other than 1 carries
    ``"lr": lr * m`` (so a schedule built afterwards scales every group proportionally: the schedules take each
    group's rate as its base) and ``"lr_mult": m``. ``lr`` is needed only for that (``None`` with rules or decay
    raises).

    Raises ``ValueError`` naming the rule (``param_groups[i]``) for a rule without a ``match`` string, an unknown
    key, a non-positive ``lr_mult``, a negative ``weight_decay`` or a glob that matches no parameter, and for a
    ``layer_decay`` outside ``(0, 1]``.
    """
    rules = [dict(r) for r in rules]
    for i, r in enumerate(rules):
        if not isinstance(r.get("match"), str) or not r["match"]:
            raise ValueError(f"param_groups[{i}]: needs a 'match' glob on parameter names, e.g. "
                             f"{{match = \"head.*\", lr_mult = 10}}; got {r!r}")
        unknown = sorted(set(r) - {"match", "lr_mult", "weight_decay"})
        if unknown:
            raise ValueError(f"param_groups[{i}]: unknown key {unknown[0]!r} (keys: match, lr_mult, weight_decay)")
        m = r.get("lr_mult", 1.0)
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise ValueError(f"param_groups[{i}].lr_mult must be a positive number, got {m!r}")
        wd = r.get("weight_decay", 0.0)
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
            raise ValueError(f"param_groups[{i}].weight_decay must be a number >= 0, got {wd!r}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if not rules and layer_decay is None:       # the plain split: a decayed group, then an undecayed one
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 or decay_norm_and_bias else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}] + \
            ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
    if lr is None:
        raise ValueError("param_groups: layer-wise rates need the base lr")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depth = _layer_depths(named) if layer_decay is not None else {}
    used = [False] * len(rules)
    groups: dict[tuple[float, float], dict] = {}
    for n, p in named:
        mult, wd = 1.0, (weight_decay if p.ndim > 1 or decay_norm_and_bias else 0.0)
        for i, r in enumerate(rules):
            if fnmatch.fnmatchcase(n, r["match"]):
                used[i] = True
                mult = float(r.get("lr_mult", 1.0))
                wd = float(r.get("weight_decay", wd))
                break
        if layer_decay is not None:
            mult *= layer_decay ** depth[n]
        key = (mult, wd)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": wd}
            if mult != 1.0:
                groups[key].update(lr=lr * mult, lr_mult=mult)
        groups[key]["params"].append(p)
    unused = [i for i, u in enumerate(used) if not u]
    if unused:
        i = unused[0]
        sample = ", ".join(n for n, _ in named[:6]) + (", ..." if len(named) > 6 else "")
        raise ValueError(f"param_groups[{i}].match {rules[i]['match']!r} matches no parameter (a rule that an "
                         f"earlier one shadows matches none either); the names look like: {sample}")
    return list(groups.values())


def _layer_depths(named: list[tuple[str, torch.Tensor]]) -> dict[str, int]:
    """Each parameter's depth below the last layer (see :func:`param_groups`): layers are the modules holding a
    parameter of >= 2 dimensions, in order; other parameters join the layer before them (or the first)."""
    owner = [n.rpartition(".")[0] for n, _ in named]
    layers: list[str] = []
    for (n, p), m in zip(named, owner):
        if p.ndim > 1 and (not layers or layers[-1] != m):
            layers.append(m)
    if not layers:
        return {n: 0 for n, _ in named}
    index, current, out = {m: i for i, m in enumerate(layers)}, 0, {}
    for (n, p), m in zip(named, owner):
        if m in index:
            current = index[m]
        out[n] = len(layers) - 1 - current
    return out


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


OPTIMIZER_WRAPPERS.register("lookahead", Lookahead, summary="Lookahead: every k inner steps slow += alpha*(fast - "
                            "slow), fast = slow, around any optimizer (1907.08610).")


def _flat(params: Iterable) -> list:
    """One parameter group: these optimizers share one rate (or one Krylov space) across all tensors,
    so the recipe's decay/no-decay groups are merged (their weight decay is the optimizer's own)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        return [p for g in params for p in g["params"]]
    return params
