"""Regularizers applied to a built model by name: the config's ``model.regularization`` list.

Each entry of :data:`REGULARIZERS` is ``factory(model, **options) -> model``, changing *any* model in place through
the surgeries of :mod:`traintricks.surgery` (forward pass: generalization); module paths and ``state_dict`` keys
stay as they were (``shake_shake`` excepted: it adds a twin branch):

| name | what it does to the model |
|---|---|
| ``dropout`` | dropout (``p``, ``mode``) on the input of the classifier head (``before``, default: a linear ``head``, else the last ``nn.Linear``) or on the output of ``after`` (:func:`~traintricks.surgery.add_dropout`) |
| ``dropconnect`` | the classifier head (or the ``nn.Linear``/``nn.Conv2d`` modules of ``where``) becomes DropConnect (``p``; :func:`~traintricks.surgery.add_dropconnect`) |
| ``stochastic_depth`` | every residual branch found by tracing gets stochastic depth (:func:`~traintricks.surgery.add_stochastic_depth`): survival falling linearly to ``survival`` (``rule``), the paper's form by default |
| ``shake_shake`` | every residual branch that is a module of its own paired with a fresh copy under :class:`~traintricks.nn.ShakeShake` |
| ``shakedrop`` | ShakeDrop on every residual branch's output (:func:`~traintricks.surgery.add_shakedrop`), ``p_l`` falling linearly to ``survival`` |
| ``gaussian_noise`` | :class:`~traintricks.nn.GaussianNoise` (``std``) on the model's input, after every activation module, or after the modules a selector ``where`` names (:func:`~traintricks.surgery.add_noise`) |

The residual techniques need residual additions ``y = x + f(x)`` in the traced model and say so otherwise.
"""
from __future__ import annotations

import copy

from torch import nn

from ..nn import ShakeShake
from ..registry import Registry
from ..surgery import (NothingToChangeError, add_dropconnect, add_dropout, add_noise, add_shakedrop,
                       add_stochastic_depth, find_residual_additions)

REGULARIZERS = Registry("regularizer", section="forward pass: generalization")


def _head(model: nn.Module) -> str:
    """The classifier head: ``head`` when the model has a linear one (ours), else its last ``nn.Linear``."""
    return "head" if isinstance(getattr(model, "head", None), nn.Linear) else "last:type:Linear"


def _residual(name: str, model: nn.Module, surgery, *args, **kwargs) -> nn.Module:
    try:
        surgery(model, *args, **kwargs)
    except NothingToChangeError as e:
        raise ValueError(f"{name} needs residual blocks (additions y = x + f(x) whose branch ends in a module); "
                         f"{type(model).__name__} has none it can act on: {e}") from None
    return model


def _reset(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def _check_survival(survival: float) -> None:
    if not 0.0 < survival <= 1.0:
        raise ValueError(f"survival must be in (0, 1], got {survival}")


def _check_rule(rule: str) -> None:
    if rule not in ("linear", "uniform"):
        raise ValueError(f"rule must be 'linear' (falling linearly with depth, the paper's) or 'uniform', got {rule!r}")


@REGULARIZERS.register("dropout")
def dropout(model: nn.Module, p: float = 0.2, mode: str = "element", before: str | None = None,
            after: str | None = None) -> nn.Module:
    """Dropout with probability p on the classifier head's input, or by selector (1207.0580)."""
    if before is None and after is None:
        before = _head(model)
    add_dropout(model, p, before=before, after=after, mode=mode)
    return model


@REGULARIZERS.register("dropconnect")
def dropconnect(model: nn.Module, p: float = 0.5, where: str | None = None) -> nn.Module:
    """DropConnect on the classifier head (or `where`): weights dropped with probability p, one mask per batch (Wan 2013)."""
    add_dropconnect(model, p, where=_head(model) if where is None else where)
    return model


@REGULARIZERS.register("stochastic_depth")
def stochastic_depth(model: nn.Module, survival: float = 0.8, mode: str = "row", rule: str = "linear",
                     form: str = "paper", where: str | None = None) -> nn.Module:
    """Stochastic depth: residual branches dropped per sample, survival falling linearly to `survival` (1603.09382).

    ``survival`` is the last branch's survival probability (the drop rate is ``1 - survival``); ``form="paper"``
    scales a branch by its survival at inference (the paper's eq. 5), ``"inverted"`` by ``1 / survival`` in
    training (timm, torchvision)."""
    _check_survival(survival)
    _check_rule(rule)
    if form not in ("paper", "inverted"):
        raise ValueError(f"form must be 'paper' (scaled at inference) or 'inverted' (scaled in training), got {form!r}")
    return _residual("stochastic_depth", model, add_stochastic_depth, 1.0 - survival, rule, mode, form=form,
                     where=where)


def _find_branches(model: nn.Module, name: str):
    adds = find_residual_additions(model)
    if not adds:
        raise ValueError(f"{name} needs residual blocks (additions y = x + f(x)); {type(model).__name__} has none")
    return adds


@REGULARIZERS.register("shake_shake")
def shake_shake(model: nn.Module) -> nn.Module:
    """Shake-Shake: each residual branch gets a twin; forward mixes them by alpha, backward by an independent beta (1705.07485).

    Only for residual branches that are modules of their own (one input, every conv/linear layer of the branch in
    it: ``self.branch(h)``, a ViT block's ``self.attn``); refused, naming the blocks, otherwise (a torchvision
    block's branch is ``conv1 ... bn2`` spread over the block: use ``shakedrop``)."""
    adds = _find_branches(model, "shake_shake")
    bad = [f"{a.location or '<model>'} (branch ends in {a.branch_op})" for a in adds if not a.separable]
    if bad:
        raise ValueError(f"shake_shake needs each residual branch to be a module of its own, to pair it with a twin; "
                         f"not so in {', '.join(bad)} (ShakeDrop, 'shakedrop', needs no twin)")
    for a in adds:
        parent_path, _, attr = a.branch.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        branch = getattr(parent, attr)
        setattr(parent, attr, ShakeShake(branch, _reset(copy.deepcopy(branch))))
    return model


def _old_shakedrop_level(state_dict, prefix, *_args) -> None:
    """Before loading: a checkpoint of the former ``ShakeDrop(branch)`` wrapper (the branch's keys one ``branch.``
    level deeper) loads into the hooked branch (the level is dropped when every key of the branch has it)."""
    own = [k for k in state_dict if k.startswith(prefix)]
    inner = prefix + "branch."
    if not own or not all(k.startswith(inner) for k in own):
        return
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[prefix + k[len(inner):] if k.startswith(inner) else k] = v


@REGULARIZERS.register("shakedrop")
def shakedrop(model: nn.Module, survival: float = 0.5, rule: str = "linear",
              alpha: tuple[float, float] = (-1.0, 1.0), beta: tuple[float, float] = (0.0, 1.0),
              where: str | None = None) -> nn.Module:
    """ShakeDrop: branch scaled by b + alpha - b*alpha forward, b + beta - b*beta backward; p_l falls linearly to `survival` (1802.02375)."""
    if not 0.0 <= survival <= 1.0:
        raise ValueError(f"survival must be in [0, 1], got {survival}")
    _check_rule(rule)
    report = None
    try:
        report = add_shakedrop(model, survival, rule, tuple(alpha), tuple(beta), where=where)
    except NothingToChangeError as e:
        raise ValueError(f"shakedrop needs residual blocks (additions y = x + f(x) whose branch ends in a module); "
                         f"{type(model).__name__} has none it can act on: {e}") from None
    for path, _what in report.changed:
        module = model.get_submodule(path)
        if "branch" not in module._modules and next(module.parameters(), None) is not None:
            module._register_load_state_dict_pre_hook(_old_shakedrop_level)
    return model


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Tanh)


def _is_root(name: str, _module: nn.Module) -> bool:
    return name == ""


@REGULARIZERS.register("gaussian_noise")
def gaussian_noise(model: nn.Module, std: float = 0.1, where: str = "input") -> nn.Module:
    """Gaussian noise N(0, std^2) in training on the input, after every activation module, or after the modules `where` selects."""
    if where == "input":
        add_noise(model, std, before=_is_root)
    elif where == "activations":
        try:
            add_noise(model, std, after=_ACTIVATIONS)
        except NothingToChangeError:
            raise ValueError(f"gaussian_noise: where='activations' found no activation modules in "
                             f"{type(model).__name__} (functional activations such as F.relu are not modules; give "
                             f"a selector, e.g. where = 'type:Conv2d')") from None
    else:
        add_noise(model, std, after=where)
    return model
