"""Dropout (Hinton et al. 2012, arXiv:1207.0580; Srivastava et al. 2014), element-wise or per channel.

Training, with drop probability ``p`` and a mask ``m ~ Bernoulli(1 - p)``:

    y = x * m / (1 - p)          so that  E[y] = x

("inverted" dropout: the survivors are scaled up in training so that inference is the identity,
which equals the paper's rule of scaling the weights by ``1 - p`` at test time). ``mode="element"``
draws one mask value per element; ``mode="channel"`` (spatial dropout, Tompson et al. 2015,
arXiv:1411.4280) one per (sample, channel), shared over positions, for convolutional features whose
neighbouring values are correlated. Backward: ``dL/dx = dL/dy * m / (1 - p)``.

Two implementations:

* the default (``impl="fast"``) *is* PyTorch's: ``F.dropout`` (element) or the feature dropout behind
  ``F.dropout1d/2d/3d`` (channel), so outputs, masks (drawn in the input's memory order, channels_last too),
  low-precision roundings, gradients, saved tensors and errors (an integer input raises PyTorch's
  ``RuntimeError`` in training) are PyTorch's, bit for bit, under the same seed.
* ``impl="reference"`` (keyword-only) computes it from the formula above: the mask ``bernoulli_(1 - p)`` drawn as
  PyTorch draws it on the CPU (a tensor like the input, or one value per (sample, channel)), the noise
  ``m / (1 - p)`` rounded to the input's dtype and multiplied, as PyTorch rounds; backward saves only the
  boolean mask (1 byte per element, PyTorch's CPU path saves the noise in the input's dtype). It also takes a
  ``generator``.

:class:`Dropout1d`, :class:`Dropout2d`, :class:`Dropout3d` are PyTorch's classes of those names (subclasses),
unbatched inputs included, with the same ``impl`` option. On a GPU PyTorch's fused kernel draws other values
than ``bernoulli_`` (the same distribution), so there only the default path equals PyTorch's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import _fx_leaf

IMPLS = ("fast", "reference")


class DropoutFunction(torch.autograd.Function):
    """``y = x * noise`` with ``noise = mask / (1 - p)`` in ``x``'s dtype; saves the boolean mask only."""

    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * mask.to(x.dtype).div_(1.0 / scale)

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved_tensors
        return dy * mask.to(dy.dtype).div_(1.0 / ctx.scale), None, None


def check_probability(name: str, p: float, allow_one: bool = False) -> float:
    """``p`` in ``[0, 1)`` (``[0, 1]`` with ``allow_one``), else a ``ValueError`` naming ``name``."""
    if not (0.0 <= p <= 1.0 if allow_one else 0.0 <= p < 1.0):
        raise ValueError(f"{name}: p must be in [0, 1{']' if allow_one else ')'}, got {p}")
    return float(p)


def _check_impl(name: str, impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"{name}: impl must be 'fast' or 'reference', got {impl!r}")
    return impl


def _reference(x: torch.Tensor, p: float, training: bool, inplace: bool, channel: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The from-the-formula dropout (module docstring) of a batched input; channel: one draw per (N, C)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x.mul_(0.0) if inplace else x * 0.0
    if channel:
        noise = torch.empty(x.shape[:2] + (1,) * (x.ndim - 2), dtype=x.dtype, device=x.device)
    else:
        noise = torch.empty_like(x)                          # the input's memory order, as PyTorch's
    # (no generator keyword at all when None: torch.compile traces that with symbolic shapes)
    noise = noise.bernoulli_(1.0 - p) if generator is None else noise.bernoulli_(1.0 - p, generator=generator)
    if inplace or not x.is_floating_point():                 # integers: PyTorch's RuntimeError from div_
        noise = noise.div_(1.0 - p)
        return x.mul_(noise) if inplace else x * noise
    return DropoutFunction.apply(x, noise.bool(), 1.0 / (1.0 - p))


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            mode: str = "element", impl: str = "fast", generator: torch.Generator | None = None) -> torch.Tensor:
    """Functional dropout with ``F.dropout``'s arguments ``(input, p, training, inplace)``; see the module
    docstring. Identity when not ``training`` or ``p == 0``; zeros when ``p == 1``.

    ``input``: any shape for ``mode="element"``; (N, C, ...) with at least one position for ``mode="channel"``
    (the batched layout of ``F.dropout1d/2d/3d``; for unbatched inputs use :class:`Dropout1d`/2d/3d). Keyword-only:
    ``mode``, ``impl`` (``"fast"``: PyTorch's kernels; ``"reference"``: the formula, a boolean mask saved) and
    ``generator`` (reference implementation only: given, it selects it). Raises ``ValueError`` for ``p``
    outside ``[0, 1]`` (PyTorch's message), an unknown mode or impl, or a channel-mode input without positions;
    PyTorch's ``RuntimeError`` for an integer input in training."""
    if mode not in ("element", "channel"):
        raise ValueError(f"dropout: mode must be 'element' or 'channel', got {mode!r}")
    if isinstance(training, str):
        raise TypeError(f"dropout(input, p, training, inplace) takes F.dropout's arguments; give mode={training!r} "
                        "by name")
    _check_impl("dropout", impl)
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    channel = mode == "channel"
    if channel and input.ndim < 3:
        raise ValueError(f"dropout(mode='channel') needs (N, C, ...) inputs with positions, got "
                         f"{tuple(input.shape)}; for unbatched inputs use Dropout1d/2d/3d")
    if impl == "reference" or generator is not None:
        return _reference(input, p, training, inplace, channel, generator)
    if channel:                                   # what F.dropout1d/2d/3d run on batched inputs
        return torch.feature_dropout_(input, p, training) if inplace else torch.feature_dropout(input, p, training)
    return F.dropout(input, p, training, inplace)


def _traced(module: nn.Module, x):
    """``torch.fx``: the module as one ``call_module`` node (its forward depends on ``training``), else None."""
    return _fx_leaf(module, x) if isinstance(x, torch.fx.Proxy) else None


class Dropout(nn.Dropout):
    """Dropout with probability ``p``: :class:`torch.nn.Dropout` (a subclass, same arguments ``(p=0.5,
    inplace=False)``, the same computation: ``F.dropout``). Keyword-only: ``mode="channel"`` drops whole channels
    of batched (N, C, ...) inputs (spatial dropout, as ``nn.Dropout1d/2d/3d`` on batched inputs -- those classes,
    unbatched inputs included, are :class:`Dropout1d`/:class:`Dropout2d`/:class:`Dropout3d`); ``impl="reference"``
    the formula with a boolean mask saved for backward (module docstring). Identity in eval mode; zeros for
    ``p = 1``; one ``call_module`` node under ``torch.fx``, so a traced model follows ``train()``/``eval()``.

    Raises ``ValueError`` for ``p`` outside ``[0, 1]``, an unknown ``mode`` or ``impl``, ``TypeError`` for a
    mode string given as the second (``inplace``) argument."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, mode: str = "element", impl: str = "fast") -> None:
        if isinstance(inplace, str):
            raise TypeError(f"Dropout(p, inplace) takes PyTorch's arguments; give mode={inplace!r} by name")
        if mode not in ("element", "channel"):
            raise ValueError(f"Dropout: mode must be 'element' or 'channel', got {mode!r}")
        super().__init__(check_probability("Dropout", p, allow_one=True), inplace)
        self.mode, self.impl = mode, _check_impl("Dropout", impl)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        node = _traced(self, input)
        if node is not None:
            return node
        return dropout(input, self.p, self.training, self.inplace, mode=self.mode, impl=self.impl)

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers); present so that every layer has it."""

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", mode={self.mode}" if self.mode != "element" else "") + \
            (", impl='reference'" if self.impl == "reference" else "")


class _ChannelDropout:
    """What Dropout1d/2d/3d share: torch's class, the ``impl`` option, the fx leaf."""

    _torch_fn = None
    _batched_ndim: int | None = None

    def __init__(self, p: float = 0.5, inplace: bool = False, *, impl: str = "fast") -> None:
        name = type(self).__name__
        if isinstance(inplace, str):
            raise TypeError(f"{name}(p, inplace) takes PyTorch's arguments, got inplace={inplace!r}")
        super().__init__(check_probability(name, p, allow_one=True), inplace)
        self.impl = _check_impl(name, impl)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        node = _traced(self, input)
        if node is not None:
            return node
        if self.impl == "fast":
            return type(self)._torch_fn(input, self.p, self.training, self.inplace)
        return self._reference(input)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        batched = self._batched_ndim is None or x.ndim == self._batched_ndim     # PyTorch's rule
        if not batched:
            x = x.unsqueeze_(0) if self.inplace else x.unsqueeze(0)
        y = _reference(x, self.p, self.training, self.inplace, channel=True)
        if not batched:
            y = y.squeeze_(0) if self.inplace else y.squeeze(0)
        return y

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers)."""

    def extra_repr(self) -> str:
        return super().extra_repr() + (", impl='reference'" if self.impl == "reference" else "")


class Dropout1d(_ChannelDropout, nn.Dropout1d):
    """:class:`torch.nn.Dropout1d` (a subclass: ``(p=0.5, inplace=False)``, inputs (N, C, L) or (C, L), whole
    channels dropped, ``F.dropout1d``); keyword-only ``impl="reference"`` (the formula, a boolean mask saved).
    Raises PyTorch's ``RuntimeError`` for other ranks; ``ValueError`` for ``p`` outside ``[0, 1]``."""

    _torch_fn = staticmethod(F.dropout1d)
    _batched_ndim = 3

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (2, 3):
            raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {x.ndim}D input. Note that "
                               "dropout1d exists to provide channel-wise dropout on inputs with 1 spatial dimension, "
                               "a channel dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
        return super()._reference(x)


class Dropout2d(_ChannelDropout, nn.Dropout2d):
    """:class:`torch.nn.Dropout2d` (a subclass: ``(p=0.5, inplace=False)``, inputs (N, C, H, W) or (C, H, W) --
    PyTorch treats a 3-D input as batched (N, C, L), with a warning, and so do we -- ``F.dropout2d``); keyword-only
    ``impl="reference"`` (the formula, a boolean mask saved; no warnings)."""

    _torch_fn = staticmethod(F.dropout2d)
    _batched_ndim = None                                  # every rank is treated as batched, as PyTorch does


class Dropout3d(_ChannelDropout, nn.Dropout3d):
    """:class:`torch.nn.Dropout3d` (a subclass: ``(p=0.5, inplace=False)``, inputs (N, C, D, H, W) or (C, D, H, W),
    ``F.dropout3d``); keyword-only ``impl="reference"`` (the formula, a boolean mask saved; no warnings)."""

    _torch_fn = staticmethod(F.dropout3d)
    _batched_ndim = 5
