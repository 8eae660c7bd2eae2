"""Folding batch normalization into the preceding convolution or linear layer, in place, on any model.

At inference batch norm is a fixed per-channel affine map of the layer output ``z = W x + b`` (Ioffe & Szegedy
2015, arXiv:1502.03167):

    y = gamma * (z - mu) / sqrt(var + eps) + beta = s * z + (beta - s * mu),   s = gamma / sqrt(var + eps)

so the pair is one layer with ``W' = s * W`` (per output channel) and ``b' = s * (b - mu) + beta`` (``mu``/``var``
the running estimates). The analysis is :mod:`traintricks.nn.fold`'s: every module's forward traced with
``torch.fx`` (torch's and our layers kept as leaves), a pair folded only where *every* call of the layer feeds the
norm alone and every call of the norm reads that layer's output, neither's parameters or buffers being read
elsewhere. That guarantee is what makes the in-place rewrite valid: the layer keeps its path and receives the
folded weight and bias, and the norm's attribute becomes ``nn.Identity`` (the forward keeps calling it, now on the
folded output), or the activation a fused norm applies (``BatchNormAct2d``, ``InPlaceABN``).
"""
from __future__ import annotations

from torch import nn

from ..nn.fold import fold_model
from .report import SurgeryReport


def fold_batchnorm(model: nn.Module, *, example_inputs=None) -> SurgeryReport:
    """Fold every conv/linear -> batch norm pair of ``model`` in place, for inference.

    Pairs are found in the ``torch.fx`` graph of each module's forward (``self.bn1(self.conv1(x))`` in a
    torchvision-style block, neighbours in a ``nn.Sequential``, a downsample branch). For each pair the layer (any
    ``nn.Conv1d/2d/3d`` -- groups, dilation, with or without bias -- or ``nn.Linear``) gets the folded weight and a
    bias (new parameters: a layer without bias gains a ``bias`` key), and the norm (torch's, ours, batch renorm;
    with running statistics) is replaced at the same path by ``nn.Identity`` -- or by the activation of a norm that
    applies one. Module classes and forwards are kept. Outputs in eval mode are those of the original up to
    rounding (the fold is computed in float64).

    Args:
        model: the model, in eval mode.
        example_inputs: optional input (or tuple) to check each layer's output channel dim is the norm's (a
            ``Linear`` on a 3-D input is then left alone); without it that is assumed (noted in the report), and a
            folded ``Linear``/``Conv1d`` refuses other input ranks at run time.

    Returns a :class:`SurgeryReport`: ``changed`` as ``(norm path, "folded into <layer path>")``, ``skipped`` the
    norms left and why, ``notes`` (modules torch.fx could not trace, assumptions).

    Raises ``TypeError`` for a non-module, ``ValueError`` for a model in training mode (batch norm then uses batch
    statistics), :class:`NothingToChangeError` when no pair could be folded (a model without batch norm: the
    reasons are listed).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm takes an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode, where batch norm normalizes with batch "
                         "statistics and cannot be folded; call model.eval() first")
    folded, rep = fold_model(model, example_inputs=example_inputs, inplace=True)
    assert folded is model                                   # inplace keeps every module's class
    report = SurgeryReport("fold_batchnorm", notes=list(rep.notes))
    report.changed = [(norm, f"folded into {layer}; now {_describe(model, norm)}") for layer, norm in rep.folded]
    report.skipped = list(rep.not_folded)
    return report.require_changes("conv/linear -> batch norm pairs")


def _describe(model: nn.Module, path: str) -> str:
    try:
        return repr(model.get_submodule(path))
    except AttributeError:
        return "removed"
