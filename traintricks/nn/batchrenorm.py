"""Batch renormalization (Ioffe 2017, arXiv:1702.03275): batch norm that stays right for small or
non-i.i.d. batches by correcting the batch statistics towards the running ones.

Training, per channel with batch statistics ``mu_B``, ``sigma_B = sqrt(var_B + eps)`` and running
estimates ``mu``, ``sigma = sqrt(var + eps)``:

    r = clip(sigma_B / sigma, 1/rmax, rmax),   d = clip((mu_B - mu) / sigma, -dmax, dmax)   (no gradient)
    xhat = (x - mu_B) / sigma_B,   y = gamma * (xhat * r + d) + beta

so the correction is applied *before* gamma/beta. When neither clip is active, ``xhat * r + d`` equals
``(x - mu) / sigma``: the training output is the inference output, the property that removes BN's
train/test mismatch. With ``rmax = 1``, ``dmax = 0`` it is exactly batch norm. Running estimates move as
in batch norm (PyTorch's ``momentum``, ``None`` for the cumulative average, or keyword-only ``alpha = 1 -
momentum``), and inference uses them.

The limits are ramped with the step count (``num_batches_tracked``, saved in ``state_dict``): for the
first ``warmup_steps`` steps ``rmax = 1``, ``dmax = 0`` (plain BN while the running estimates settle), then
they grow linearly to their final values over ``r_ramp_steps`` and ``d_ramp_steps`` (the paper: warm-up
5k steps, rmax 1 -> 3 over 40k, dmax 0 -> 5 over 25k; scale these to your run length).

Backward: ``r`` and ``d`` are constants, so it is batch norm's backward with ``gamma * r`` in place of
``gamma`` (see :mod:`traintricks.nn.batchnorm`), and ``dL/dgamma = r * sum(dL/dy * xhat) + d * sum(dL/dy)``,
``dL/dbeta = sum(dL/dy)``. Double backward (``create_graph=True``) is refused (``r`` and ``d`` are
stop-gradients, which a second derivative through this backward would not see): with ``create_graph=True`` the
gradients require grad and differentiating them raises ``RuntimeError`` ("... cannot be differentiated twice ...",
:func:`~traintricks.nn.double_backward.refuse_double_backward`), even for ``grad(y.sum(), x, create_graph=True)``.

Constructor: batch norm's (``num_features, eps, momentum, affine, track_running_stats, device, dtype``, keyword-only
``bias``, ``alpha``, ``impl``, ``check_finite``) plus keyword-only ``rmax``, ``dmax``, ``warmup_steps``,
``r_ramp_steps``, ``d_ramp_steps``. ``track_running_stats=False`` raises ``ValueError`` (the correction needs
running estimates). The limits in force are computed from ``num_batches_tracked`` as tensors, so the forward pass
reads nothing on the host.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .batchnorm import _BatchNorm, _axes, _shape, compute_dtype, out_dtype
from .double_backward import refuse_double_backward


class BatchRenormFunction(torch.autograd.Function):
    """The equations above in tensor ops. ``rmax``, ``dmax``: floats or 0-d tensors. Returns ``(y, mu_B, var_B)``
    (``var_B`` biased)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, rmax, dmax, eps):
        axes, shape = _axes(x), _shape(x)
        mu = x.mean(dim=axes)
        xc = x - mu.view(shape)
        var = xc.square().mean(dim=axes)
        invstd = (var + eps).rsqrt()
        sigma = (running_var + eps).sqrt()
        rmax = torch.as_tensor(rmax, dtype=var.dtype, device=var.device)
        dmax = torch.as_tensor(dmax, dtype=var.dtype, device=var.device)
        r = ((var + eps).sqrt() / sigma).clamp(rmax.reciprocal(), rmax)
        d = ((mu - running_mean) / sigma).clamp(-dmax, dmax)
        xhat = xc * invstd.view(shape)
        y = (xhat * r.view(shape) + d.view(shape)) * gamma.view(shape) + beta.view(shape)
        ctx.save_for_backward(xhat, gamma, invstd, r, d)
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
    @refuse_double_backward("BatchRenormFunction (batch renormalization)")
    def backward(ctx, dy, _dmu, _dvar):
        xhat, gamma, invstd, r, d = ctx.saved_tensors
        axes, shape = _axes(dy), _shape(dy)
        m = dy.numel() // dy.shape[1]
        dbeta = dy.sum(dim=axes)
        sum_dy_xhat = (dy * xhat).sum(dim=axes)
        k = (gamma * r * invstd).view(shape)
        dx = k * (dy - (dbeta.view(shape) + xhat * sum_dy_xhat.view(shape)) / m)
        return dx, r * sum_dy_xhat + d * dbeta, dbeta, None, None, None, None, None


class FastBatchRenormFunction(torch.autograd.Function):
    """The same math on ATen kernels, two passes over ``x`` like batch norm: ATen's one-pass batch statistics
    (``batch_norm_update_stats``), then batch norm's fused inference kernel with the corrected affine map
    ``gamma * r``, ``gamma * d + beta``. For low-precision inputs (bf16 autocast), whose statistics that kernel
    would return in bf16, batch norm's training kernel gives them in float32 with ``y0 = gamma * xhat + beta``,
    and one more pass corrects it to ``r * y0 + gamma * d + beta * (1 - r)``. The backward is batch norm's fused
    backward kernel with ``gamma * r`` for ``gamma``. ``running_mean``/``running_var`` are only read (for ``r``
    and ``d``); ``rmax``/``dmax`` are floats or 0-d tensors. Returns ``(y, mu_B, var_B)`` (``var_B`` biased)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, rmax, dmax, eps):
        fused_stats = x.dtype == running_mean.dtype
        inv_sigma = (running_var + eps).rsqrt()
        if fused_stats and x.device.type == "meta":      # the stats kernel has no meta implementation
            var, mu = torch.var_mean(x, dim=_axes(x), correction=0)
            invstd = (var + eps).rsqrt()
        elif fused_stats:
            mu, var = torch.batch_norm_update_stats(x, None, None, 0.0)
            invstd = (var + eps).rsqrt()
        else:
            y, mu, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
            var = invstd.pow(-2).sub_(eps)
        rmax = torch.as_tensor(rmax, dtype=mu.dtype, device=mu.device)
        dmax = torch.as_tensor(dmax, dtype=mu.dtype, device=mu.device)
        r = (invstd.reciprocal() * inv_sigma).clamp_(rmax.reciprocal(), rmax)
        d = (mu - running_mean).mul_(inv_sigma).clamp_(-dmax, dmax)
        w = gamma * r
        if fused_stats:
            y = F.batch_norm(x, mu, var, w, torch.addcmul(beta, gamma, d), False, 0.0, eps)
        else:
            shape = _shape(x)
            torch.addcmul(torch.addcmul(beta, gamma, d).sub_(beta * r).view(shape), y, r.view(shape), out=y)
        ctx.save_for_backward(x, w, mu, invstd, r, d)
        ctx.eps = eps
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
    @refuse_double_backward("FastBatchRenormFunction (batch renormalization)")
    def backward(ctx, dy, _dmu, _dvar):
        x, w, mu, invstd, r, d = ctx.saved_tensors
        need_affine = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            dy, x, w, None, None, mu, invstd, True, ctx.eps, [ctx.needs_input_grad[0], need_affine, need_affine])
        if not need_affine:
            return dx, None, None, None, None, None, None, None
        return (dx, dw * r + db * d if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None,
                None, None, None, None, None)


class _BatchRenorm(_BatchNorm):
    """Batch renormalization over channel dim 1; see the module docstring."""

    _supports_sync = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 alpha: float | None = None, rmax: float = 3.0, dmax: float = 5.0, warmup_steps: int = 5000,
                 r_ramp_steps: int = 40000, d_ramp_steps: int = 25000, impl: str = "fast",
                 check_finite: bool = False, cumulative_warmup: bool = False) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         alpha=alpha, impl=impl, check_finite=check_finite, cumulative_warmup=cumulative_warmup)
        name = type(self).__name__
        if not track_running_stats:
            raise ValueError(f"{name}: batch renormalization corrects towards the running estimates; "
                             "track_running_stats=False leaves it none (use a batch norm)")
        if rmax < 1:
            raise ValueError(f"{name}: rmax must be >= 1, got {rmax}")
        if dmax < 0:
            raise ValueError(f"{name}: dmax must be >= 0, got {dmax}")
        if warmup_steps < 0 or r_ramp_steps < 0 or d_ramp_steps < 0:
            raise ValueError(f"{name}: warmup_steps, r_ramp_steps and d_ramp_steps must be >= 0")
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.r_ramp_steps, self.d_ramp_steps = warmup_steps, r_ramp_steps, d_ramp_steps

    def limits(self, step: int | None = None) -> tuple[float, float]:
        """``(rmax, dmax)`` in force at ``step`` (default: the current ``num_batches_tracked``, read on the host;
        the forward pass uses :meth:`limits_tensor` instead)."""
        t = int(self.num_batches_tracked) if step is None else step
        t -= self.warmup_steps
        if t < 0:
            return 1.0, 0.0
        fr = min(1.0, t / self.r_ramp_steps) if self.r_ramp_steps else 1.0
        fd = min(1.0, t / self.d_ramp_steps) if self.d_ramp_steps else 1.0
        return 1.0 + (self.rmax - 1.0) * fr, self.dmax * fd

    def limits_tensor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`limits` at the current step as 0-d tensors on the buffers' device (no host synchronization)."""
        dt = self.running_mean.dtype
        t = (self.num_batches_tracked - self.warmup_steps).to(dt)

        def ramp(steps: int) -> torch.Tensor:
            return (t / steps).clamp(0.0, 1.0) if steps else (t >= 0).to(dt)
        return 1.0 + (self.rmax - 1.0) * ramp(self.r_ramp_steps), self.dmax * ramp(self.d_ramp_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            from .batchnorm import _fx_leaf
            node = _fx_leaf(self, x)
            if node is not None:
                return node
        bn_training = self._check(x)
        if not bn_training or (self.rmax == 1.0 and self.dmax == 0.0) or x.numel() == 0:
            return self._normalize(x, bn_training)      # inference, or exactly batch norm
        rmax, dmax = self.limits_tensor()
        w, b = self._affine(x)
        if self.impl == "fast":
            y, mu, var = FastBatchRenormFunction.apply(x, w, b, self.running_mean, self.running_var, rmax, dmax,
                                                       self.eps)
        else:   # tensor ops in float32 (or float64), returned in the dtype batch norm returns (bf16 for bf16)
            out = out_dtype(x, lambda e: F.batch_norm(e, None, None, None, None, True, 0.0, 1.0))
            cd = compute_dtype(x, w)
            y, mu, var = BatchRenormFunction.apply(x.to(cd), w.to(cd), b.to(cd), self.running_mean.to(cd),
                                                   self.running_var.to(cd), rmax, dmax, self.eps)
            y = y.to(out)
        m = x.numel() // x.shape[1]
        self._track(mu, var * (m / (m - 1)))
        return y

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", rmax={self.rmax:g}, dmax={self.dmax:g}, warmup_steps={self.warmup_steps}, "
                f"r_ramp_steps={self.r_ramp_steps}, d_ramp_steps={self.d_ramp_steps}")


class BatchRenorm1d(_BatchRenorm):
    """Batch renormalization for (N, C) or (N, C, L) inputs (1702.03275); see the module docstring."""

    _dims = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch renormalization for (N, C, H, W) inputs (1702.03275); see the module docstring."""

    _dims = (4,)


class BatchRenorm3d(_BatchRenorm):
    """Batch renormalization for (N, C, D, H, W) inputs (1702.03275); see the module docstring."""

    _dims = (5,)
