"""Folding batch normalization into the preceding convolution or linear layer for inference.

At inference batch norm is a fixed per-channel affine map of the layer output ``z = W x + b``
(Ioffe & Szegedy 2015, arXiv:1502.03167; the notes' "absorb the numbers into convolution parameters"):

    y = gamma * (z - mu) / sqrt(var + eps) + beta = s * z + (beta - s * mu),   s = gamma / sqrt(var + eps)

so the pair equals one layer with weights ``W' = s * W`` (scaled per output channel) and bias
``b' = s * (b - mu) + beta``, where ``mu``/``var`` are the running estimates. The fold is exact up to
rounding, saves the normalization's time and memory at inference, and changes nothing in training
code: :func:`fold_batchnorm` works on a copy.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .batchnorm import _BatchNorm as _OurBatchNorm
from .fused import _BatchNormAct

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.modules.batchnorm._BatchNorm, _OurBatchNorm)


def _first_leaf(module: nn.Module) -> tuple[nn.Module, nn.Module | None, str | None]:
    """The first module applied by ``module`` when it is a chain of Sequentials, with its parent and name."""
    parent, name = None, None
    while isinstance(module, nn.Sequential) and len(module) > 0:
        name = next(iter(module._modules))           # named Sequentials (OrderedDict) too
        parent, module = module, module._modules[name]
    return module, parent, name


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """Return a new conv/linear layer equal to ``bn(layer(x))`` in eval mode."""
    if not isinstance(layer, _FOLDABLE):
        raise ValueError(f"cannot fold {type(bn).__name__} into {type(layer).__name__}: only Conv and Linear layers fold")
    if not getattr(bn, "track_running_stats", True) or getattr(bn, "running_mean", None) is None:
        raise ValueError(f"cannot fold {bn}: it has no running statistics (track_running_stats=False), "
                         "so it normalizes with batch statistics even at inference")
    out_ch = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn.num_features != out_ch:
        raise ValueError(f"cannot fold {bn} after {layer}: {out_ch} output channels vs {bn.num_features} features")
    fused = copy.deepcopy(layer)
    w = layer.weight.detach()
    scale = bn.running_var.to(w.dtype).add(bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight.detach().to(w.dtype)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(out_ch, dtype=w.dtype, device=w.device)
    new_bias = (bias - bn.running_mean.to(w.dtype)) * scale
    if bn.affine:
        new_bias = new_bias + bn.bias.detach().to(w.dtype)
    fused.weight = nn.Parameter(w * scale.view(-1, *([1] * (w.ndim - 1))))
    fused.bias = nn.Parameter(new_bias)
    return fused


def _remainder(bn: nn.Module) -> nn.Module:
    """What is left of ``bn`` once folded: nothing, or the activation of a fused norm + activation."""
    if isinstance(bn, _BatchNormAct):
        return {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU,
                "leaky_relu": lambda: nn.LeakyReLU(bn.negative_slope, inplace=True)}[bn.activation]()
    return nn.Identity()


def _fold_children(module: nn.Module) -> int:
    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            layer, nxt = module._modules[a], module._modules[b]
            bn, parent, pname = _first_leaf(nxt)
            if isinstance(layer, _FOLDABLE) and isinstance(bn, _BN):
                module._modules[a] = fold_pair(layer, bn)
                if parent is None:
                    module._modules[b] = _remainder(bn)
                else:
                    parent._modules[pname] = _remainder(bn)
                folded += 1
    for child in module.children():
        folded += _fold_children(child)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every batch norm that directly follows a Conv/Linear layer in a
    ``nn.Sequential`` (possibly as the first module of the next nested Sequential) folded into that layer.

    Batch renorm folds the same way (at inference it is batch norm with its running estimates); a fused
    batch norm + activation leaves its activation behind. Batch norms in other positions (e.g. pre-activation ones, which follow an addition) are left in place;
    a pair that cannot be folded (no running statistics, mismatched channels) raises ``ValueError``.
    The number folded is stored as ``model.folded_batchnorms``.
    """
    folded_model = copy.deepcopy(model).eval()
    n = _fold_children(folded_model)
    folded_model.folded_batchnorms = n
    return folded_model
