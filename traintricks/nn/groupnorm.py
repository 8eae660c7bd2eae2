"""Group, instance and layer normalization from their math, with a hand-derived backward.

Group norm (Wu & He 2018, arXiv:1803.08494) splits the ``C`` channels of each sample into ``G`` groups
and normalizes each (sample, group) over its ``m = (C / G) * H * W`` values -- the same way in training
and at inference, so it does not depend on the batch size:

    mu_ng = (1/m) sum x,   var_ng = (1/m) sum (x - mu_ng)^2,   xhat = (x - mu_ng) / sqrt(var_ng + eps)
    y = gamma_c * xhat + beta_c                         (gamma, beta per channel)

Instance norm (Ulyanov et al. 2016, arXiv:1607.08022) is ``G = C``; layer norm (Ba et al. 2016,
arXiv:1607.06450) is ``G = 1`` (every sample normalized over all its channels and positions).

Backward, per (sample, group) with ``g = dL/dy * gamma_c`` and means over its ``m`` values:

    dL/dx = (1 / sqrt(var_ng + eps)) * (g - mean(g) - xhat * mean(g * xhat))
    dL/dgamma_c = sum_{n, positions} dL/dy * xhat,   dL/dbeta_c = sum_{n, positions} dL/dy

Two implementations of that math, chosen with ``impl=``: ``"reference"`` (:class:`GroupNormFunction`,
the equations in tensor ops, gradchecked) and ``"fast"`` (default: the same
forward on ATen's fused ``native_group_norm`` kernel with its registered derivative
``native_group_norm_backward``, the formula above in one kernel; tested equal to the reference).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NonFiniteInputError

from .batchnorm import check_impl


class GroupNormFunction(torch.autograd.Function):
    """Group norm of ``x`` (N, C, *) with ``G`` groups, the hand-derived backward above.

    Returns ``(y, mu, invstd)`` with ``mu``/``invstd`` of shape (N, G).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, groups, eps):
        n, c = x.shape[:2]
        xg = x.reshape(n, groups, -1)
        mu = xg.mean(dim=2, keepdim=True)
        xc = xg - mu
        invstd = (xc.square().mean(dim=2, keepdim=True) + eps).rsqrt()
        xhat = (xc * invstd).reshape(x.shape)
        cshape = [1, c] + [1] * (x.ndim - 2)
        y = xhat * gamma.view(cshape) + beta.view(cshape)
        ctx.save_for_backward(xhat, gamma, invstd)
        ctx.groups = groups
        mu, invstd = mu.view(n, groups), invstd.view(n, groups)
        ctx.mark_non_differentiable(mu, invstd)
        return y.contiguous(memory_format=_format(x)), mu, invstd

    @staticmethod
    def backward(ctx, dy, _dmu, _dinvstd):
        xhat, gamma, invstd = ctx.saved_tensors
        n, c = dy.shape[:2]
        cshape = [1, c] + [1] * (dy.ndim - 2)
        axes = [0] + list(range(2, dy.ndim))
        dgamma = (dy * xhat).sum(dim=axes)
        dbeta = dy.sum(dim=axes)
        g = (dy * gamma.view(cshape)).reshape(n, ctx.groups, -1)
        xh = xhat.reshape(n, ctx.groups, -1)
        dx = invstd * (g - g.mean(dim=2, keepdim=True) - xh * (g * xh).mean(dim=2, keepdim=True))
        return dx.reshape(dy.shape).contiguous(memory_format=_format(dy)), dgamma, dbeta, None, None


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class GroupNorm(nn.Module):
    """Group normalization (1803.08494): ``num_channels`` split into ``num_groups`` groups, each sample
    normalized per group, then a per-channel affine map. Takes (N, C, *) inputs; see the module docstring.

    Arguments follow :class:`torch.nn.GroupNorm`; ``impl`` picks ``"fast"`` (ATen kernels) or ``"reference"``.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 impl: str = "fast") -> None:
        super().__init__()
        name = type(self).__name__
        if num_groups < 1 or num_channels < 1:
            raise ValueError(f"{name}: num_groups and num_channels must be >= 1, got {num_groups}, {num_channels}")
        if num_channels % num_groups:
            raise ValueError(f"{name}: num_channels={num_channels} is not divisible by num_groups={num_groups}")
        if eps <= 0:
            raise ValueError(f"{name}: eps must be positive, got {eps}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.impl = check_impl(impl)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_buffer("weight", torch.ones(num_channels), persistent=False)
            self.register_buffer("bias", torch.zeros(num_channels), persistent=False)

    def _label(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise ValueError(f"{self._label()}: expected an (N, C, ...) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_channels:
            raise ValueError(f"{self._label()}: input has {x.shape[1]} channels, expected {self.num_channels} "
                             f"(shape {tuple(x.shape)})")
        if x.numel() == 0:
            raise ValueError(f"{self._label()}: empty input of shape {tuple(x.shape)}")
        if self.impl == "fast":
            n, c = x.shape[:2]
            w, b = (self.weight, self.bias) if self.affine else (None, None)
            y, mu, invstd = torch.native_group_norm(x, w, b, n, c, x.numel() // (n * c),
                                                             self.num_groups, self.eps)
        else:
            y, mu, invstd = GroupNormFunction.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        if not bool(torch.isfinite(mu).all()):
            raise NonFiniteInputError(f"{self._label()}: non-finite values (NaN or Inf) in the input of shape "
                             f"{tuple(x.shape)}")
        return y

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
                + (", impl='reference'" if self.impl == "reference" else ""))


class InstanceNorm2d(GroupNorm):
    """Instance normalization (1607.08022): each sample's channels normalized separately over (H, W);
    group norm with one channel per group. Same statistics in training and inference (no running
    estimates). Like :class:`torch.nn.InstanceNorm2d`, ``affine`` defaults to False."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False, impl: str = "fast") -> None:
        super().__init__(num_features, num_features, eps=eps, affine=affine, impl=impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"{self._label()}: expected an (N, C, H, W) input, got shape {tuple(x.shape)}")
        if self.impl == "fast" and _format(x) == torch.channels_last:
            # ATen's channels-last group norm kernel is slow with one channel per group (2-3x here);
            # normalizing an NCHW copy and converting back is as fast as torch.nn.InstanceNorm2d
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}" + (
            ", impl='reference'" if self.impl == "reference" else "")


class LayerNorm(GroupNorm):
    """Layer normalization (1607.06450): each sample normalized over all its channels and positions
    (group norm with one group), then a per-channel affine map.

    For an (N, C) input this equals ``torch.nn.LayerNorm(C)``; for (N, C, H, W) it equals
    ``torch.nn.GroupNorm(1, C)`` (``torch.nn.LayerNorm([C, H, W])`` would instead learn one gamma per
    position and so depend on the image size).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, impl: str = "fast") -> None:
        super().__init__(1, num_features, eps=eps, affine=affine, impl=impl)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}" + (
            ", impl='reference'" if self.impl == "reference" else "")
