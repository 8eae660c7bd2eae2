"""Batch norm and its activation as one operation: ``y = act(BN(x))`` with ``act`` ReLU, leaky ReLU or GELU.

Forward: batch norm (:mod:`traintricks.nn.batchnorm`), then the activation applied in place on BN's output,
so no separate pre-activation tensor is kept. Backward, with ``z = BN(x)``:

    dL/dz = dL/dy * act'(z),   then batch norm's backward from dL/dz

ReLU and leaky ReLU get ``act'(z)`` from the output alone (``z > 0`` iff ``y > 0``); GELU's derivative
needs ``z``, which is recomputed from ``x`` and the saved statistics (``z = gamma * (x - mu_B) * invstd +
beta``, one elementwise pass) instead of being stored. Saved for backward: ``x`` and ``y`` (ReLU family)
or ``x`` alone (GELU), against ``x`` + ``z`` for an unfused BN + GELU. For the ReLU family the module's fast
path gets the same saved tensors from batch norm's ATen kernel followed by the in-place activation under
autograd (no Python backward, so no overhead); :class:`BatchNormActFunction` implements all three.

:class:`BatchNormAct1d`/:class:`BatchNormAct2d`/:class:`BatchNormAct3d` are batch norms (PyTorch's batch-norm
constructor, parameters, buffers, ``state_dict`` keys and errors; ``fold_batchnorm`` support) with keyword-only
``activation`` (default ``"relu"``) and ``negative_slope``; ``impl="reference"`` composes the reference batch norm
with the activation for testing. They derive from ``torch.nn.modules.batchnorm._NormBase`` but not from
``_BatchNorm``, so ``SyncBatchNorm.convert_sync_batchnorm`` does not replace them with a batch norm that drops the
activation (use :func:`traintricks.parallel.sync_batchnorm_`, which synchronizes them). The GELU path's custom
backward refuses double backward (``RuntimeError`` "... cannot be differentiated twice ..." when a gradient taken
with ``create_graph=True`` is differentiated, :func:`~traintricks.nn.double_backward.refuse_double_backward`); the ReLU
family's is PyTorch's own (differentiable twice).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .batchnorm import _BatchNorm, _fx_leaf
from .double_backward import refuse_double_backward

FUSED_ACTIVATIONS = ("relu", "leaky_relu", "gelu")


def _act(z: torch.Tensor, kind: str, slope: float, inplace: bool) -> torch.Tensor:
    if kind == "relu":
        return z.relu_() if inplace else z.relu()
    if kind == "leaky_relu":
        return F.leaky_relu(z, slope, inplace=inplace)
    return F.gelu(z)


class BatchNormActFunction(torch.autograd.Function):
    """Training-mode ``act(BN(x))`` on ATen kernels. ``gamma``/``beta`` may be ``None``. Returns
    ``(y, mu_B, var_B)`` (``var_B`` biased)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, kind, slope):
        z, mu, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
        y = _act(z, kind, slope, inplace=True)
        if kind == "gelu":
            ctx.save_for_backward(x, gamma, beta, mu, invstd)
        else:
            ctx.save_for_backward(x, gamma, beta, mu, invstd, y)
        ctx.eps, ctx.kind, ctx.slope = eps, kind, slope
        var = invstd.pow(-2).sub_(eps)
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
    @refuse_double_backward("BatchNormActFunction (batch norm + activation)")
    def backward(ctx, dy, _dmu, _dvar):
        x, gamma, beta, mu, invstd = ctx.saved_tensors[:5]
        if ctx.kind == "relu":
            dz = torch.ops.aten.threshold_backward(dy, ctx.saved_tensors[5], 0)
        elif ctx.kind == "leaky_relu":
            dz = torch.ops.aten.leaky_relu_backward(dy, ctx.saved_tensors[5], ctx.slope, True)
        else:
            z = F.batch_norm(x, mu, invstd.pow(-2).sub_(ctx.eps), gamma, beta, False, 0.0, ctx.eps)
            dz = torch.ops.aten.gelu_backward(dy, z)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            dz, x, gamma, None, None, mu, invstd, True, ctx.eps, mask)
        return dx, dgamma, dbeta, None, None, None


class _BatchNormAct(_BatchNorm):
    """Batch norm followed by an activation as one op; see the module docstring."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 activation: str = "relu", negative_slope: float = 0.01, alpha: float | None = None,
                 impl: str = "fast", check_finite: bool = False, cumulative_warmup: bool = False) -> None:
        if isinstance(eps, str):
            raise TypeError(f"{type(self).__name__}: eps must be a number, got {eps!r}; the activation is "
                            f"keyword-only: {type(self).__name__}({num_features}, activation={eps!r})")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         alpha=alpha, impl=impl, check_finite=check_finite, cumulative_warmup=cumulative_warmup)
        if activation not in FUSED_ACTIVATIONS:
            raise ValueError(f"{type(self).__name__}: activation must be one of {', '.join(FUSED_ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.activation, self.negative_slope = activation, float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            node = _fx_leaf(self, x)
            if node is not None:
                return node
        bn_training = self._check(x)
        if (bn_training and self.activation == "gelu" and self.impl == "fast" and x.numel() > 0
                and not getattr(self, "sync", False)):
            # GELU: the fused function recomputes BN's output in backward instead of saving it
            y, mu, var = BatchNormActFunction.apply(x, self.weight, self.bias, self.eps, self.activation,
                                                    self.negative_slope)
            m = x.numel() // x.shape[1]
            self._track(mu, var * (m / (m - 1)))
            return y
        # ReLU family (and inference): batch norm's kernel, then the activation in place on its output; autograd
        # then saves exactly what the fused function would (x for BN, y for the mask) with no Python backward
        z = self._normalize(x, bn_training)
        return _act(z, self.activation, self.negative_slope, inplace=self.impl == "fast" or not bn_training)

    def extra_repr(self) -> str:
        act = self.activation + (f"({self.negative_slope:g})" if self.activation == "leaky_relu" else "")
        return super().extra_repr() + f", activation={act}"


class BatchNormAct1d(_BatchNormAct):
    """``act(BatchNorm1d(x))`` as one op for (N, C) or (N, C, L) inputs."""

    _dims = (2, 3)


class BatchNormAct2d(_BatchNormAct):
    """``act(BatchNorm2d(x))`` as one op for (N, C, H, W) inputs."""

    _dims = (4,)


class BatchNormAct3d(_BatchNormAct):
    """``act(BatchNorm3d(x))`` as one op for (N, C, D, H, W) inputs."""

    _dims = (5,)


__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d", "BatchNormActFunction", "FUSED_ACTIVATIONS"]
