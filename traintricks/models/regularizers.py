"""Regularizers applied to a built model by name: the config's ``model.regularization`` list.

Each entry of :data:`REGULARIZERS` is ``factory(model, **options) -> model``, changing the model in place
with a layer from :mod:`traintricks.nn` (forward pass: generalization):

| name | what it does to the model |
|---|---|
| ``dropout`` | dropout (``p``, ``mode``) on the features entering the classifier head |
| ``dropconnect`` | the classifier head becomes a :class:`~traintricks.nn.DropConnectLinear` (``p``) |
| ``stochastic_depth`` | every residual branch given the paper's stochastic depth (:func:`~traintricks.nn.add_stochastic_depth`, in place: the same parameter names), survival falling linearly to ``survival`` |
| ``shake_shake`` | every residual branch paired with a fresh copy under :class:`~traintricks.nn.ShakeShake` |
| ``shakedrop`` | every residual branch wrapped in :class:`~traintricks.nn.ShakeDrop`, ``p_l`` falling linearly to ``survival`` |
| ``gaussian_noise`` | :class:`~traintricks.nn.GaussianNoise` (``std``) on the input or after every activation |

Residual techniques need a model with residual blocks (``preact_resnet``) and say so otherwise.
Dropout and input noise act through forward pre-hooks, so they add no parameters and leave the
``state_dict`` keys unchanged.
"""
from __future__ import annotations

import copy

from torch import nn

from ..nn import (DropConnectLinear, Dropout, GaussianNoise, ShakeDrop, ShakeShake, add_stochastic_depth,
                  linear_survival)
from ..nn.dropout import check_probability
from ..registry import Registry
from .resnet import PreActBlock

REGULARIZERS = Registry("regularizer", section="forward pass: generalization")


def _head(model: nn.Module, what: str) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{what} needs a model with a linear classifier `head`; {type(model).__name__} has none")
    return head


def _blocks(model: nn.Module, what: str) -> list[PreActBlock]:
    blocks = [m for m in model.modules() if isinstance(m, PreActBlock)]
    if not blocks:
        raise ValueError(f"{what} needs residual blocks (model preact_resnet); {type(model).__name__} has none")
    return blocks


def _reset(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


@REGULARIZERS.register("dropout")
def dropout(model: nn.Module, p: float = 0.2, mode: str = "element") -> nn.Module:
    """Dropout with probability p on the classifier head's input (1207.0580)."""
    layer = Dropout(p, mode=mode)
    model.head_dropout = layer
    _head(model, "dropout").register_forward_pre_hook(lambda _m, args: (layer(args[0]),) + tuple(args[1:]))
    return model


@REGULARIZERS.register("dropconnect")
def dropconnect(model: nn.Module, p: float = 0.5) -> nn.Module:
    """DropConnect on the classifier head: weights dropped with probability p, one mask per batch (Wan 2013)."""
    old = _head(model, "dropconnect")
    model.head = DropConnectLinear.from_linear(old, check_probability("dropconnect", p))
    model.head._forward_pre_hooks.update(old._forward_pre_hooks)   # e.g. a dropout listed before it
    return model


@REGULARIZERS.register("stochastic_depth")
def stochastic_depth(model: nn.Module, survival: float = 0.8, mode: str = "row") -> nn.Module:
    """Stochastic depth: residual branches dropped per sample, survival falling linearly to `survival` (1603.09382)."""
    blocks = _blocks(model, "stochastic_depth")
    for block, p in zip(blocks, linear_survival(len(blocks), survival)):
        add_stochastic_depth(block.branch, p, mode)
    return model


@REGULARIZERS.register("shake_shake")
def shake_shake(model: nn.Module) -> nn.Module:
    """Shake-Shake: each residual branch gets a twin; forward mixes them by alpha, backward by an independent beta (1705.07485)."""
    for block in _blocks(model, "shake_shake"):
        block.branch = ShakeShake(block.branch, _reset(copy.deepcopy(block.branch)))
    return model


@REGULARIZERS.register("shakedrop")
def shakedrop(model: nn.Module, survival: float = 0.5) -> nn.Module:
    """ShakeDrop: branch scaled by b + alpha - b*alpha forward, b + beta - b*beta backward; p_l falls linearly to `survival` (1802.02375)."""
    blocks = _blocks(model, "shakedrop")
    for block, p in zip(blocks, linear_survival(len(blocks), survival)):
        block.branch = ShakeDrop(block.branch, p)
    return model


_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU)


@REGULARIZERS.register("gaussian_noise")
def gaussian_noise(model: nn.Module, std: float = 0.1, where: str = "input") -> nn.Module:
    """Gaussian noise N(0, std^2) in training on the input or after every activation (`where`)."""
    layer = GaussianNoise(std)
    if where == "input":
        model.input_noise = layer
        model.register_forward_pre_hook(lambda _m, args: (layer(args[0]),) + tuple(args[1:]))
    elif where == "activations":
        found = 0
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, _ACTIVATIONS):
                    setattr(parent, name, nn.Sequential(child, layer))
                    found += 1
        if not found:
            raise ValueError(f"gaussian_noise: where='activations' found no activation modules in {type(model).__name__}")
    else:
        raise ValueError(f"where must be 'input' or 'activations', got {where!r}")
    return model
