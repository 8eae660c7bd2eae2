"""In-Place Activated Batch Norm (Rota Bulò, Porzi & Kontschieder 2018, arXiv:1712.02616).

Batch norm followed by leaky ReLU normally saves its input ``x`` (for BN's backward) and its output ``z``
(or the pre-activation, for the activation's). InPlaceABN saves **only the output** ``z`` and inverts both
maps in the backward pass. With ``y = gamma * xhat + beta`` and ``z = leaky(y)`` (slope ``s > 0``):

    y = z if z >= 0 else z / s                     (the leaky ReLU is invertible for s > 0)
    xhat = (y - beta) / gamma                       (the affine map is invertible for gamma != 0)

and BN's backward needs only ``xhat`` (see :mod:`traintricks.nn.batchnorm`), with ``dL/dy = dL/dz * (1 if
z >= 0 else s)``:

    dL/dx = (gamma / sigma_B) * (dL/dy - mean(dL/dy) - xhat * mean(dL/dy * xhat))
    dL/dgamma = sum(dL/dy * xhat),   dL/dbeta = sum(dL/dy)

Division by ``gamma`` needs ``gamma != 0``: as in the paper (sec. 3.2, which clamps ``|gamma|``), a ``|gamma|``
below ``eps_gamma`` (default 1e-5) is used as ``sign(gamma) * eps_gamma`` in the inversion, so the backward stays
finite; for such channels the gradient is that of the clamped layer (documented approximation; exact otherwise).
The backward runs as: leaky ReLU's backward kernel from ``z``, the inverse leaky ReLU, the inverse affine map
(one per-channel pass), and ATen's fused batch-norm backward kernel fed with ``xhat``. Saved for backward: ``z`` (one activation) and per-channel vectors -- about half of BN + leaky
ReLU's two activations. The forward writes ``z`` over the BN output buffer (in place). Inference uses the
running estimates like batch norm.

Constructor: batch norm's (``num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device,
dtype``, keyword-only ``bias``, ``alpha``, ``check_finite``) plus keyword-only ``activation_param`` (the slope,
> 0) and ``eps_gamma``. The layers derive from ``torch.nn.modules.batchnorm._NormBase`` but not ``_BatchNorm``, so
``SyncBatchNorm.convert_sync_batchnorm`` does not replace them with a batch norm without the activation; they
cannot be synchronized (:func:`traintricks.parallel.sync_batchnorm_` refuses them). Double backward is refused
(``RuntimeError`` "... cannot be differentiated twice ..." when the gradient is differentiated,
:func:`~traintricks.nn.double_backward.refuse_double_backward`): the backward inverts the output instead of
differentiating a graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.batchnorm import BatchNormBase as _BatchNorm, fx_leaf as _fx_leaf
from ..nn.double_backward import refuse_double_backward


class InPlaceABNFunction(torch.autograd.Function):
    """Training-mode BN + leaky ReLU saving only the output. ``running_mean``/``running_var`` (optional) are
    updated in the kernel at rate ``momentum``. Returns ``(z, mu_B, var_B)`` (``var_B`` biased)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, slope, eps_gamma, running_mean=None, running_var=None, momentum=0.0):
        z, mu, invstd = torch.native_batch_norm(x, gamma, beta, running_mean, running_var, True, momentum, eps)
        F.leaky_relu(z, slope, inplace=True)
        g_safe = torch.where(gamma.abs() < eps_gamma, torch.where(gamma < 0, -eps_gamma, eps_gamma), gamma)
        ctx.save_for_backward(z, g_safe, beta, invstd)
        ctx.slope = slope
        var = invstd.pow(-2).sub_(eps)
        ctx.mark_non_differentiable(mu, var)
        return z, mu, var

    @staticmethod
    @refuse_double_backward("InPlaceABNFunction (in-place activated batch norm)")
    def backward(ctx, dz, _dmu, _dvar):
        z, gamma, beta, invstd = ctx.saved_tensors
        s = ctx.slope
        dy = torch.ops.aten.leaky_relu_backward(dz, z, s, True)     # dL/dy from the output's sign
        y = F.leaky_relu(z, 1.0 / s)                                 # invert the leaky ReLU
        # invert the affine map, xhat = (y - beta) / gamma, as one per-channel pass (an inference-mode batch
        # norm with mean beta, variance gamma^2 and weight sign(gamma))
        xhat = F.batch_norm(y, beta, gamma.square(), torch.sign(gamma), None, False, 0.0, 0.0)
        # BN's backward needs only xhat: ATen's kernel with mean 0 and invstd 1 sees xhat as its input, and
        # weight gamma * invstd restores the 1 / sigma_B factor of dL/dx
        zeros, ones = torch.zeros_like(invstd), torch.ones_like(invstd)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            dy, xhat, gamma * invstd, None, None, zeros, ones, True, 0.0, mask)
        return dx, dgamma, dbeta, None, None, None, None, None, None


class _InPlaceABN(_BatchNorm):
    """BN + leaky ReLU (slope ``activation_param``) saving only its output; see the module docstring."""

    _supports_sync = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 alpha: float | None = None, activation_param: float = 0.01, eps_gamma: float = 1e-5,
                 check_finite: bool = False, cumulative_warmup: bool = False) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
                         alpha=alpha, check_finite=check_finite, cumulative_warmup=cumulative_warmup)
        if not activation_param > 0:
            raise ValueError(f"{type(self).__name__}: the leaky ReLU slope must be > 0 to be invertible, "
                             f"got {activation_param}")
        if not eps_gamma > 0:
            raise ValueError(f"{type(self).__name__}: eps_gamma must be > 0, got {eps_gamma}")
        self.slope, self.eps_gamma = float(activation_param), float(eps_gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            node = _fx_leaf(self, x)
            if node is not None:
                return node
        bn_training = self._check(x)
        if not bn_training or x.numel() == 0:
            return F.leaky_relu(self._normalize(x, bn_training), self.slope, inplace=True)
        w, b = self._affine(x)
        in_kernel = (self._tracking() and self.momentum is not None and not self.cumulative_warmup
                     and self.running_mean is not None)
        if in_kernel:                  # the kernel moves the running estimates at rate momentum
            z, _, _ = InPlaceABNFunction.apply(x, w, b, self.eps, self.slope, self.eps_gamma,
                                               self.running_mean, self.running_var, self.momentum)
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            return z
        z, mu, var = InPlaceABNFunction.apply(x, w, b, self.eps, self.slope, self.eps_gamma)
        m = x.numel() // x.shape[1]
        self._track(mu, var * (m / (m - 1)))
        return z

    def extra_repr(self) -> str:
        return super().extra_repr() + f", leaky_relu slope={self.slope}, eps_gamma={self.eps_gamma}"


class InPlaceABN(_InPlaceABN):
    """In-Place Activated BatchNorm for (N, C, H, W) inputs (1712.02616)."""

    _dims = (4,)


class InPlaceABN1d(_InPlaceABN):
    """In-Place Activated BatchNorm for (N, C) or (N, C, L) inputs."""

    _dims = (2, 3)
