"""Batch renormalization (Ioffe 2017, arXiv:1702.03275): batch norm that stays right for small or
non-i.i.d. batches by correcting the batch statistics towards the running ones.

Training, per channel with batch statistics ``mu_B``, ``sigma_B = sqrt(var_B + eps)`` and running
estimates ``mu``, ``sigma = sqrt(var + eps)``:

    r = clip(sigma_B / sigma, 1/rmax, rmax),   d = clip((mu_B - mu) / sigma, -dmax, dmax)   (no gradient)
    xhat = (x - mu_B) / sigma_B,   y = gamma * (xhat * r + d) + beta

so the correction is applied *before* gamma/beta. When neither clip is active, ``xhat * r + d`` equals
``(x - mu) / sigma``: the training output is the inference output, the property that removes BN's
train/test mismatch. With ``rmax = 1``, ``dmax = 0`` it is exactly batch norm. Running estimates move as
in batch norm (``alpha``, or PyTorch's ``momentum = 1 - alpha``), and inference uses them.

The limits are ramped with the step count (``num_batches_tracked``, saved in ``state_dict``): for the
first ``warmup_steps`` steps ``rmax = 1``, ``dmax = 0`` (plain BN while the running estimates settle), then
they grow linearly to their final values over ``r_ramp_steps`` and ``d_ramp_steps`` (the paper: warm-up
5k steps, rmax 1 -> 3 over 40k, dmax 0 -> 5 over 25k; scale these to your run length).

Backward: ``r`` and ``d`` are constants, so it is batch norm's backward with ``gamma * r`` in place of
``gamma`` (see :mod:`traintricks.nn.batchnorm`), and ``dL/dgamma = r * sum(dL/dy * xhat) + d * sum(dL/dy)``,
``dL/dbeta = sum(dL/dy)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .batchnorm import _BatchNorm, _axes, _shape


class BatchRenormFunction(torch.autograd.Function):
    """The equations above in tensor ops. Returns ``(y, mu_B, var_B)``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, rmax, dmax, eps):
        axes, shape = _axes(x), _shape(x)
        mu = x.mean(dim=axes)
        xc = x - mu.view(shape)
        var = xc.square().mean(dim=axes)
        invstd = (var + eps).rsqrt()
        sigma = (running_var + eps).sqrt()
        r = ((var + eps).sqrt() / sigma).clamp(1.0 / rmax, rmax)
        d = ((mu - running_mean) / sigma).clamp(-dmax, dmax)
        xhat = xc * invstd.view(shape)
        y = (xhat * r.view(shape) + d.view(shape)) * gamma.view(shape) + beta.view(shape)
        ctx.save_for_backward(xhat, gamma, invstd, r, d)
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
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
    """The same math on ATen kernels, two passes over ``x`` like batch norm: ATen's one-pass batch
    statistics (``batch_norm_update_stats``, which also moves the running estimates), then batch norm's
    fused inference kernel with the corrected affine map ``gamma * r``, ``gamma * d + beta``. For
    low-precision inputs (bf16 autocast), whose statistics that kernel would return in bf16, batch norm's
    training kernel gives them in float32 with ``y0 = gamma * xhat + beta``, and one more pass corrects it
    to ``r * y0 + gamma * d + beta * (1 - r)``. The backward is batch norm's fused backward kernel with
    ``gamma * r`` for ``gamma``. Updates ``running_mean``/``running_var`` in place (rate ``momentum``), using
    their values from before the update for ``r`` and ``d``. Returns ``(y, mu_B)``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, rmax, dmax, eps, momentum):
        plain = rmax == 1.0 and dmax == 0.0          # warm-up: r = 1, d = 0 exactly, plain batch norm
        fused_stats = x.dtype == running_mean.dtype and not plain
        if not plain:
            inv_sigma = (running_var + eps).rsqrt()
            mu_old = running_mean.clone()
        if fused_stats:
            mu, var = torch.batch_norm_update_stats(x, running_mean, running_var, momentum)
            invstd = (var + eps).rsqrt()
        else:
            y, mu, invstd = torch.native_batch_norm(x, gamma, beta, running_mean, running_var, True,
                                                             momentum, eps)
        if plain:
            r, d, w = torch.ones_like(mu), torch.zeros_like(mu), gamma
        else:
            r = (invstd.reciprocal() * inv_sigma).clamp_(1.0 / rmax, rmax)
            d = (mu - mu_old).mul_(inv_sigma).clamp_(-dmax, dmax)
            w = gamma * r
            if fused_stats:
                y = F.batch_norm(x, mu, var, w, torch.addcmul(beta, gamma, d), False, 0.0, eps)
            else:
                shape = _shape(x)
                torch.addcmul(torch.addcmul(beta, gamma, d).sub_(beta * r).view(shape), y, r.view(shape), out=y)
        ctx.save_for_backward(x, w, mu, invstd, r, d)
        ctx.eps = eps
        ctx.mark_non_differentiable(mu)
        return y, mu

    @staticmethod
    def backward(ctx, dy, _dmu):
        x, w, mu, invstd, r, d = ctx.saved_tensors
        need_affine = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            dy, x, w, None, None, mu, invstd, True, ctx.eps, [ctx.needs_input_grad[0], need_affine, need_affine])
        if not need_affine:
            return dx, None, None, None, None, None, None, None, None
        return dx, dw * r + db * d, db, None, None, None, None, None, None


class _BatchRenorm(_BatchNorm):
    """Batch renormalization over channel dim 1; see the module docstring."""

    def __init__(self, num_features: int, eps: float = 1e-5, alpha: float | None = None,
                 momentum: float | None = None, affine: bool = True, rmax: float = 3.0, dmax: float = 5.0,
                 warmup_steps: int = 5000, r_ramp_steps: int = 40000, d_ramp_steps: int = 25000,
                 impl: str = "fast") -> None:
        super().__init__(num_features, eps=eps, alpha=alpha, momentum=momentum, affine=affine, impl=impl)
        name = type(self).__name__
        if rmax < 1:
            raise ValueError(f"{name}: rmax must be >= 1, got {rmax}")
        if dmax < 0:
            raise ValueError(f"{name}: dmax must be >= 0, got {dmax}")
        if warmup_steps < 0 or r_ramp_steps < 0 or d_ramp_steps < 0:
            raise ValueError(f"{name}: warmup_steps, r_ramp_steps and d_ramp_steps must be >= 0")
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.r_ramp_steps, self.d_ramp_steps = warmup_steps, r_ramp_steps, d_ramp_steps

    def limits(self, step: int | None = None) -> tuple[float, float]:
        """``(rmax, dmax)`` in force at ``step`` (default: the current ``num_batches_tracked``)."""
        t = int(self.num_batches_tracked) if step is None else step
        t -= self.warmup_steps
        if t < 0:
            return 1.0, 0.0
        fr = min(1.0, t / self.r_ramp_steps) if self.r_ramp_steps else 1.0
        fd = min(1.0, t / self.d_ramp_steps) if self.d_ramp_steps else 1.0
        return 1.0 + (self.rmax - 1.0) * fr, self.dmax * fd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.training:
            return self._inference(x)
        rmax, dmax = self.limits()
        if self.impl == "fast":
            y, mu = FastBatchRenormFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                                  rmax, dmax, self.eps, 1.0 - self.alpha)
            self._check_finite(x, mu)
            self.num_batches_tracked.add_(1)
            return y
        y, mu, var = BatchRenormFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                               rmax, dmax, self.eps)
        self._update_running(x, mu, var)
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
