"""Group, layer and instance normalization from their math, with a hand-derived backward.

Group norm (Wu & He 2018, arXiv:1803.08494) splits the ``C`` channels of each sample into ``G`` groups
and normalizes each (sample, group) over its ``m = (C / G) * prod(spatial)`` values -- the same way in
training and at inference, so it does not depend on the batch size:

    mu_ng = (1/m) sum x,   var_ng = (1/m) sum (x - mu_ng)^2,   xhat = (x - mu_ng) / sqrt(var_ng + eps)
    y = gamma_c * xhat + beta_c                         (gamma, beta per channel)

Instance norm (Ulyanov et al. 2016, arXiv:1607.08022) is ``G = C``; the notes' layer norm (Ba et al. 2016,
arXiv:1607.06450) for conv feature maps is ``G = 1`` (every sample normalized over all its channels and
positions, per-channel gamma/beta): :class:`GroupLayerNorm`, the registry's ``"layernorm"``. The class
named :class:`LayerNorm` is PyTorch's: it normalizes over the *last* ``len(normalized_shape)`` dimensions
with element-wise gamma/beta of ``normalized_shape`` (for an (N, C) input the two agree).

Backward, per (sample, group) with ``g = dL/dy * gamma_c`` and means over its ``m`` values:

    dL/dx = (1 / sqrt(var_ng + eps)) * (g - mean(g) - xhat * mean(g * xhat))
    dL/dgamma_c = sum_{n, positions} dL/dy * xhat,   dL/dbeta_c = sum_{n, positions} dL/dy

Two implementations, chosen with the keyword-only ``impl=``:

* ``"fast"`` (default): PyTorch's own functional ops (``F.group_norm`` / ``F.layer_norm`` /
  ``F.instance_norm``, ATen's fused kernels and their registered derivatives), so every input PyTorch
  takes (non-contiguous, channels-last, empty, unbatched) behaves as in PyTorch. Instance norm without
  running statistics on a contiguous (N, C, *) input runs as group norm with ``G = C`` (the same math in
  one kernel, about 2x faster than PyTorch's batch-norm-over-a-reshaped-batch route).
* ``"reference"``: :class:`GroupNormFunction`, the equations above in tensor ops with the hand-derived
  backward (gradchecked in float64). Its backward recomputes ``xhat`` from the saved input with
  differentiable ops, so double backward (``create_graph=True``, gradgradcheck) is right too. It computes in
  float32 for bf16/fp16 inputs and returns the dtype PyTorch's functional op returns (the input's; under
  autocast whatever autocast makes of it).

Under ``torch.fx`` symbolic tracing every layer is one ``call_module`` node, as PyTorch's own norm layers are
(so ``gm.eval()`` switches an instance norm with running statistics to them); only a layer traced as the root
records its functional op, in the mode it is traced in.

No layer synchronizes with the host in ``forward``: shape checks are static, and the finiteness check
(``bool(isfinite(y).all())``, a device-to-host copy) runs only with the keyword-only ``check_finite=True``,
raising :class:`~traintricks.errors.NonFiniteInputError`. Without it NaN/Inf flow into the loss, where the
trainer stops on a non-finite loss anyway.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NonFiniteInputError
from .batchnorm import _fx_leaf, check_impl, compute_dtype, out_dtype


def _normalize(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xhat, mu, invstd)`` of an (N, C, *) input: ``xhat`` (N, G, m), ``mu``/``invstd`` (N, G, 1)."""
    n, c = x.shape[0], x.shape[1]
    xg = x.reshape(n, groups, (c // groups) * math.prod(x.shape[2:]))
    mu = xg.mean(dim=2, keepdim=True)
    xc = xg - mu
    invstd = (xc.square().mean(dim=2, keepdim=True) + eps).rsqrt()
    return xc * invstd, mu, invstd


def _format(x: torch.Tensor) -> torch.memory_format:
    """The memory format PyTorch's kernels give the output of ``x``: channels-last stays channels-last."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class GroupNormFunction(torch.autograd.Function):
    """Group norm of ``x`` (N, C, *) with ``groups`` groups and the hand-derived backward of the module
    docstring. ``gamma``/``beta`` are (C,) tensors or ``None`` (no scale / no shift).

    Returns ``(y, mu, invstd)``: ``y`` shaped like ``x`` (channels-last stays channels-last), ``mu`` and
    ``invstd`` of shape (N, G), not differentiable. The backward is itself differentiable (it recomputes the
    normalization from the saved input), so double backward is right. Inputs are not validated here; the
    modules check shapes first.
    """

    generate_vmap_rule = True     # torch.func.vmap works through it (the ops below are all batchable)

    @staticmethod
    def forward(x, gamma, beta, groups, eps):
        n, c = x.shape[0], x.shape[1]
        xhat, mu, invstd = _normalize(x, groups, eps)
        y = xhat.reshape(x.shape)
        cshape = [1, c] + [1] * (x.ndim - 2)
        if gamma is not None:
            y = y * gamma.view(cshape)
        if beta is not None:
            y = y + beta.view(cshape)
        return y.contiguous(memory_format=_format(x)), mu.view(n, groups), invstd.view(n, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, gamma, _, groups, eps = inputs
        ctx.save_for_backward(x, gamma)
        ctx.groups, ctx.eps = groups, eps
        ctx.mark_non_differentiable(output[1], output[2])

    @staticmethod
    def backward(ctx, dy, _dmu, _dinvstd):
        x, gamma = ctx.saved_tensors
        groups = ctx.groups
        c = x.shape[1]
        cshape = [1, c] + [1] * (x.ndim - 2)
        axes = [0] + list(range(2, x.ndim))
        xh, _, invstd = _normalize(x, groups, ctx.eps)        # differentiable ops: double backward is right
        dgamma = (dy * xh.reshape(x.shape)).sum(dim=axes) if ctx.needs_input_grad[1] else None
        dbeta = dy.sum(dim=axes) if ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            g = (dy * gamma.view(cshape) if gamma is not None else dy).reshape(xh.shape)
            dx = invstd * (g - g.mean(dim=2, keepdim=True) - xh * (g * xh).mean(dim=2, keepdim=True))
            dx = dx.reshape(x.shape).contiguous(memory_format=_format(dy))
        return dx, dgamma, dbeta, None, None


def _cast(p: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if p is None else p.to(dtype)


def _check_eps(name: str, eps: float) -> None:
    if eps < 0:
        raise ValueError(f"{name}: eps must be >= 0 (it is added to the variance), got {eps}")


class _FiniteCheck:
    """What the layers here share beyond PyTorch's base: the keyword-only ``impl`` and the opt-in finiteness check
    (a host synchronization, so off by default)."""

    check_finite: bool = False

    def _setup(self, impl: str, check_finite: bool) -> None:
        self.impl = check_impl(impl)
        self.check_finite = check_finite

    def _finite(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.check_finite and not isinstance(y, torch.fx.Proxy) and not bool(torch.isfinite(y).all()):
            raise NonFiniteInputError(f"{type(self).__name__}({self.extra_repr()}): non-finite values (NaN or "
                                      f"Inf) in the output for an input of shape {tuple(x.shape)}")
        return y


def _impl_repr(m) -> str:
    return ", impl='reference'" if m.impl == "reference" else ""


class GroupNorm(_FiniteCheck, nn.GroupNorm):
    """Group normalization (Wu & He 2018, 1803.08494): the ``num_channels`` channels split into ``num_groups``
    groups, each (sample, group) normalized over its channels and positions, then a per-channel affine map.

    A :class:`torch.nn.GroupNorm` with the same arguments, defaults, parameters (``weight``/``bias`` of shape
    (C,); none with ``affine=False``, no ``bias`` with ``bias=False``), ``state_dict`` keys, outputs and
    errors. Input (N, C, *) of any layout (non-contiguous, channels-last, empty); output of the same shape
    and dtype. Raises ``ValueError`` at construction when ``num_channels`` is not divisible by
    ``num_groups`` (PyTorch's message), when either is < 1 or ``eps`` < 0; ``RuntimeError`` in forward for a
    rank < 2 input or a channel count not divisible by the groups / not matching ``weight`` (as PyTorch).

    Keyword-only: ``impl="fast" | "reference"`` (see the module docstring); ``check_finite=True`` raises
    :class:`~traintricks.errors.NonFiniteInputError` on NaN/Inf outputs (synchronizes with the host).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True, impl: str = "fast",
                 check_finite: bool = False) -> None:
        name = type(self).__name__
        if num_groups < 1 or num_channels < 1:
            raise ValueError(f"{name}: num_groups and num_channels must be >= 1, got {num_groups}, {num_channels}")
        _check_eps(name, eps)
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)
        self._setup(impl, check_finite)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.fx.Proxy):
            node = _fx_leaf(self, input)       # one call_module node, as torch's GroupNorm
            if node is not None:
                return node
        if self.impl == "fast" or isinstance(input, torch.fx.Proxy):    # traced root: the functional op
            y = F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        else:
            self._check_reference_input(input)
            # computed in float32 (or float64), returned in the dtype F.group_norm returns (bf16 for bf16)
            out = out_dtype(input, lambda e: F.group_norm(e, 1))
            cd = compute_dtype(input, self.weight, self.bias)
            y = GroupNormFunction.apply(input.to(cd), _cast(self.weight, cd), _cast(self.bias, cd),
                                        self.num_groups, self.eps)[0].to(out)
        return self._finite(input, y)

    def _check_reference_input(self, x: torch.Tensor) -> None:
        """PyTorch's forward errors (same type, same facts), for the reference path that bypasses ATen."""
        label = f"{type(self).__name__}({self.extra_repr()})"
        if x.ndim < 2:
            raise RuntimeError(f"{label}: Expected at least 2 dimensions for input tensor but received {x.ndim}")
        if x.shape[1] % self.num_groups:
            raise RuntimeError(f"{label}: Expected number of channels in input to be divisible by num_groups, "
                               f"but got input of shape {list(x.shape)} and num_groups={self.num_groups}")
        for p in (self.weight, self.bias):
            if p is not None and p.numel() != x.shape[1]:
                raise RuntimeError(f"{label}: Expected weight to be a vector of size equal to the number of "
                                   f"channels in input, but got weight of shape {list(p.shape)} and input of "
                                   f"shape {list(x.shape)}")

    def extra_repr(self) -> str:
        return super().extra_repr() + _impl_repr(self)


class GroupLayerNorm(GroupNorm):
    """The notes' layer norm for feature maps (Ba et al. 2016, 1607.06450, as group norm with one group):
    each sample normalized over all its channels and positions, then a per-channel affine map.

    Exactly ``GroupNorm(1, num_channels)`` (a :class:`torch.nn.GroupNorm`, same ``state_dict``), and so
    ``torch.nn.GroupNorm(1, C)``; for an (N, C) input it equals ``torch.nn.LayerNorm(C)``. Unlike
    ``torch.nn.LayerNorm([C, H, W])`` it learns one gamma per channel, not per position, so it does not depend
    on the image size. This is the registry's ``"layernorm"`` (the models' choice by name).
    Input (N, C, *); errors as :class:`GroupNorm`.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None, *,
                 bias: bool = True, impl: str = "fast", check_finite: bool = False) -> None:
        super().__init__(1, num_channels, eps, affine, device, dtype, bias=bias, impl=impl,
                         check_finite=check_finite)


class LayerNorm(_FiniteCheck, nn.LayerNorm):
    """Layer normalization (Ba et al. 2016, 1607.06450) over the last ``len(normalized_shape)`` dimensions,
    as :class:`torch.nn.LayerNorm`: same arguments and defaults, element-wise ``weight``/``bias`` of shape
    ``normalized_shape`` (none with ``elementwise_affine=False``, no ``bias`` with ``bias=False``), same
    ``state_dict`` keys, outputs and errors.

    Input (*, *normalized_shape), any layout, empty batches included; output of the same shape and dtype.
    ``RuntimeError`` when the input's trailing dimensions are not ``normalized_shape`` (PyTorch's message);
    ``ValueError`` for ``eps`` < 0. For the per-sample, per-channel-affine layer norm of conv feature maps
    (group norm with one group, the registry's ``"layernorm"``) see :class:`GroupLayerNorm`.

    Keyword-only: ``impl="fast" | "reference"`` (reference: :class:`GroupNormFunction` with one group over the
    flattened trailing dimensions, then the element-wise affine map); ``check_finite`` as :class:`GroupNorm`.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, impl: str = "fast", check_finite: bool = False) -> None:
        _check_eps(type(self).__name__, eps)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self._setup(impl, check_finite)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.fx.Proxy):
            node = _fx_leaf(self, input)       # one call_module node, as torch's LayerNorm
            if node is not None:
                return node
        if self.impl == "fast" or isinstance(input, torch.fx.Proxy):    # traced root: the functional op
            y = F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
            return self._finite(input, y)
        k = len(self.normalized_shape)
        if input.ndim < k or tuple(input.shape[input.ndim - k:]) != self.normalized_shape:
            raise RuntimeError(f"{type(self).__name__}({self.extra_repr()}): Given normalized_shape="
                               f"{list(self.normalized_shape)}, expected input with shape "
                               f"[*, {', '.join(map(str, self.normalized_shape))}], but got input of size"
                               f"{list(input.shape)}")
        m = math.prod(self.normalized_shape)
        rows = input.numel() // m if m else math.prod(input.shape[:input.ndim - k])
        out = out_dtype(input, lambda e: F.layer_norm(e, (e.shape[-1],)))
        cd = compute_dtype(input, self.weight, self.bias)
        y = GroupNormFunction.apply(input.to(cd).reshape(rows, 1, m), None, None, 1, self.eps)[0]
        y = y.reshape(input.shape)
        if self.weight is not None:
            y = y * self.weight.to(cd)
        if self.bias is not None:
            y = y + self.bias.to(cd)
        return self._finite(input, y.to(out))

    def extra_repr(self) -> str:
        return super().extra_repr() + _impl_repr(self)


def _verify_spatial_size(x: torch.Tensor) -> None:
    """PyTorch's instance-norm check: one value per (sample, channel) has no variance to normalize with."""
    if math.prod(x.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.size()}")


class _InstanceNormMixin(_FiniteCheck):
    """Our implementations behind PyTorch's ``_InstanceNorm.forward`` (which checks the rank and channel
    count and unsqueezes unbatched inputs, then calls ``_apply_instance_norm`` on an (N, C, *) input)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True,
                 impl: str = "fast", check_finite: bool = False) -> None:
        """PyTorch's ``InstanceNormNd`` arguments, then our keyword-only ``impl`` and ``check_finite``."""
        _check_eps(type(self).__name__, eps)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self._setup(impl, check_finite)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.fx.Proxy):
            node = _fx_leaf(self, input)       # one call_module node (train/eval switchable), as torch's
            if node is not None:
                return node
            # the traced root: symbolic tracing cannot run the rank checks on a Proxy, so record the
            # functional op PyTorch's forward ends in, for a batched input, in the mode it is traced in
            return F.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                   self.training or not self.track_running_stats,
                                   self.momentum if self.momentum is not None else 0.0, self.eps)
        return super().forward(input)

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            return self._finite(input, self._reference(input))
        if not self.track_running_stats and input.numel() > 0 and input.is_contiguous():
            # instance statistics only: group norm with one channel per group, one fused kernel
            _verify_spatial_size(input)
            return self._finite(input, F.group_norm(input, input.shape[1], self.weight, self.bias, self.eps))
        return self._finite(input, super()._apply_instance_norm(input))

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        # computed in float32 (or float64), returned in the dtype F.instance_norm returns (bf16 for bf16)
        out = out_dtype(x, lambda e: F.instance_norm(e))
        cd = compute_dtype(x, self.weight, self.bias)
        return self._reference_in(x.to(cd), _cast(self.weight, cd), _cast(self.bias, cd)).to(out)

    def _reference_in(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        cshape = [1, c] + [1] * (x.ndim - 2)
        if self.training or not self.track_running_stats:     # statistics of each (sample, channel)
            _verify_spatial_size(x)
            y = GroupNormFunction.apply(x, weight, bias, c, self.eps)[0]
            if self.training and self.track_running_stats:   # (an empty batch gives NaN, as in PyTorch)
                # as PyTorch: the running estimates move towards the batch mean of the per-instance
                # statistics (variance unbiased over the positions); momentum=None leaves them as they are
                momentum = self.momentum if self.momentum is not None else 0.0
                with torch.no_grad():
                    m = math.prod(x.shape[2:])
                    xs = x.detach().reshape(n, c, m)
                    mu = xs.mean(dim=2, keepdim=True)
                    var = (xs - mu).square().sum(dim=2) / (m - 1)
                    self.running_mean.lerp_(mu.squeeze(2).mean(dim=0).to(self.running_mean.dtype), momentum)
                    self.running_var.lerp_(var.mean(dim=0).to(self.running_var.dtype), momentum)
            return y
        scale = (self.running_var.to(x.dtype) + self.eps).rsqrt()    # inference with the running estimates
        if weight is not None:
            scale = scale * weight
        shift = -self.running_mean.to(x.dtype) * scale
        if bias is not None:
            shift = shift + bias
        return x * scale.view(cshape) + shift.view(cshape)

    def extra_repr(self) -> str:
        return super().extra_repr() + _impl_repr(self)


_IN_DOC = """Instance normalization (Ulyanov et al. 2016, 1607.08022) for {shape} inputs: each sample's channels
    normalized separately over their positions (group norm with one channel per group), then a per-channel
    affine map when ``affine=True``.

    A :class:`torch.nn.{name}` (a subclass) with the same arguments and defaults -- ``(num_features,
    eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, device=None, dtype=None, *, bias=True)``
    -- the same parameters, buffers (``running_mean``/``running_var``/``num_batches_tracked`` only with
    ``track_running_stats=True``; PyTorch never increments ``num_batches_tracked`` here, nor do we), outputs,
    running-estimate updates, ``state_dict`` keys and errors: ``ValueError`` for a wrong rank, for a channel
    count other than ``num_features`` when ``affine`` (a warning otherwise), and for one position per
    (sample, channel) when the instance statistics are used. Unbatched {unbatched} inputs are normalized as
    a batch of one.

    Keyword-only: ``impl="fast" | "reference"``, ``check_finite`` (see the module docstring).
    """


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    __doc__ = _IN_DOC.format(shape="(N, C, L)", name="InstanceNorm1d", unbatched="(C, L)")


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    __doc__ = _IN_DOC.format(shape="(N, C, H, W)", name="InstanceNorm2d", unbatched="(C, H, W)")


class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    __doc__ = _IN_DOC.format(shape="(N, C, D, H, W)", name="InstanceNorm3d", unbatched="(C, D, H, W)")


__all__ = ["GroupNormFunction", "GroupNorm", "GroupLayerNorm", "LayerNorm", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d"]
