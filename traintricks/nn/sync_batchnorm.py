"""Synchronized batch normalization: the batch statistics of every process's share of the batch together.

Under data parallelism each process sees ``B / K`` examples; plain batch norm normalizes with those alone.
Synchronized BN all-reduces the per-channel sums ``sum x``, ``sum x^2`` and counts, so every process normalizes
with the statistics of the whole global batch:

    mu = S1 / M,   var = S2 / M - mu^2,   xhat = (x - mu) / sqrt(var + eps)      (M: global count)

and in backward all-reduces ``sum dL/dy`` and ``sum dL/dy * xhat`` (the two sums of batch norm's backward,
:mod:`traintricks.nn.batchnorm`), so ``dL/dx = (gamma / sigma) * (g - sum(g)/M - xhat * sum(g xhat)/M)`` uses
the global ones. Parameter gradients stay local; DDP averages them, which gives exactly the gradient of one
process with the whole batch (tested). Enabled for our ``BatchNorm1d/2d/3d`` and ``BatchNormAct1d/2d/3d`` by
:func:`sync_batchnorm_` or the config key ``parallel.sync_batchnorm``; batch renorm and in-place ABN cannot be
synchronized and are refused. PyTorch's ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` also works on our plain
batch norms (they are ``torch.nn.modules.batchnorm._BatchNorm``s) and replaces them by PyTorch's layer. Double
backward through :class:`SyncBatchNormFunction` is refused (``refuse_double_backward``: the gradient of a
gradient raises "... cannot be differentiated twice ...").

It lives in :mod:`traintricks.nn` beside the layers that call it (as ``torch.nn.SyncBatchNorm`` does);
:mod:`traintricks.parallel` re-exports :func:`sync_batchnorm_` and :class:`SyncBatchNormFunction`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .double_backward import refuse_double_backward


def distributed_world() -> int:
    """The default process group's size, 1 without one (a static Python query: no tensor is read)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _axes(x):
    return [0] + list(range(2, x.ndim))


def _shape(x):
    return [1, -1] + [1] * (x.ndim - 2)


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with statistics all-reduced over the default process group.
    Returns ``(y, mu, var_biased, global_count)``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        axes, shape = _axes(x), _shape(x)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        stats = torch.cat([xf.sum(dim=axes), xf.square().sum(dim=axes), count])
        dist.all_reduce(stats)
        c = x.shape[1]
        m = stats[-1]
        mu = stats[:c] / m
        var = (stats[c:2 * c] / m - mu.square()).clamp_min(0)
        invstd = (var + eps).rsqrt()
        xhat = (xf - mu.view(shape)) * invstd.view(shape)
        y = xhat * gamma.view(shape) + beta.view(shape)
        ctx.save_for_backward(xhat, gamma, invstd, m)
        ctx.in_dtype = x.dtype
        ctx.mark_non_differentiable(mu, var, m)
        return y.to(x.dtype), mu, var, m

    @staticmethod
    @refuse_double_backward("SyncBatchNormFunction (synchronized batch norm)")
    def backward(ctx, dy, _dmu, _dvar, _dm):
        xhat, gamma, invstd, m = ctx.saved_tensors
        axes, shape = _axes(dy), _shape(dy)
        dyf = dy.to(xhat.dtype)
        dbeta = dyf.sum(dim=axes)
        dgamma = (dyf * xhat).sum(dim=axes)
        sums = torch.cat([dbeta, dgamma])
        dist.all_reduce(sums)                       # the global sums of batch norm's backward
        c = dy.shape[1]
        g_sum, gx_sum = sums[:c] * gamma, sums[c:] * gamma
        dx = (gamma * invstd).view(shape) * dyf - invstd.view(shape) * (g_sum.view(shape) + xhat * gx_sum.view(shape)) / m
        return dx.to(ctx.in_dtype), dgamma, dbeta, None


def _is_ours(mod: nn.Module) -> bool:
    """Whether ``mod`` is a traintricks batch norm: each declares ``_supports_sync`` on its class (the base of
    :mod:`.batchnorm`, which imports this module: this one cannot import it back)."""
    return isinstance(getattr(type(mod), "_supports_sync", None), bool)


def is_traintricks_batchnorm(mod: nn.Module) -> bool:
    """Whether ``mod`` is one of this package's batch norms (plain, renorm, norm + activation, In-Place ABN)."""
    return _is_ours(mod)


def can_synchronize(mod: nn.Module) -> bool:
    """Whether ``mod`` is one of this package's batch norms that can synchronize its statistics (plain batch norm,
    norm + activation; not batch renorm nor In-Place ABN)."""
    return _is_ours(mod) and bool(mod._supports_sync)


def sync_batchnorm_(model: nn.Module) -> int:
    """Switch every traintricks batch norm in ``model`` to synchronized statistics; returns how many.

    Raises ``ValueError`` naming the layers that cannot be synchronized (batch renorm, in-place ABN) before
    changing any, rather than leaving them silently unsynchronized. PyTorch's own batch norms are left to
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``."""
    ours = [(name, mod) for name, mod in model.named_modules() if _is_ours(mod)]
    refused = [f"{name or '<root>'} ({type(mod).__name__})" for name, mod in ours
               if not mod._supports_sync]
    if refused:
        raise ValueError("sync_batchnorm_: these layers cannot synchronize their statistics across processes: "
                         + ", ".join(refused) + "; use batchnorm or batchnorm_act")
    for _, mod in ours:
        mod.sync = True
    return len(ours)
