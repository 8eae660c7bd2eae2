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

The paper (sec. 3.2) rewrites this with ``y`` directly so that ``1/gamma`` cancels; we follow it:
``xhat * mean(g xhat) = (y - beta) * mean(g (y - beta)) / gamma^2``, so with ``|gamma|`` clamped below at
``eps_gamma`` (their epsilon, default 1e-5; a smaller ``|gamma|`` is used as ``sign * eps_gamma``), the inversion
stays finite. Saved for backward: ``z`` (one activation) and per-channel vectors -- about half of BN + leaky
ReLU's two activations. The forward writes ``z`` over the BN output buffer (in place). Inference uses the
running estimates like batch norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.batchnorm import _BatchNorm, _axes, _shape


class InPlaceABNFunction(torch.autograd.Function):
    """Training-mode BN + leaky ReLU saving only the output. Returns ``(z, mu_B, var_B)``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, slope, eps_gamma):
        z, mu, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
        F.leaky_relu(z, slope, inplace=True)
        g_safe = torch.where(gamma.abs() < eps_gamma, torch.where(gamma < 0, -eps_gamma, eps_gamma), gamma)
        ctx.save_for_backward(z, g_safe, beta, invstd)
        ctx.slope = slope
        var = invstd.pow(-2).sub_(eps)
        ctx.mark_non_differentiable(mu, var)
        return z, mu, var

    @staticmethod
    def backward(ctx, dz, _dmu, _dvar):
        z, gamma, beta, invstd = ctx.saved_tensors
        axes, shape = _axes(z), _shape(z)
        s = ctx.slope
        pos = z >= 0
        y = torch.where(pos, z, z / s)                               # invert the leaky ReLU
        dy = torch.where(pos, dz, dz * s)
        m = dz.numel() // dz.shape[1]
        yb = y - beta.view(shape)                                    # = gamma * xhat
        dbeta = dy.sum(dim=axes)
        dgamma = (dy * yb).sum(dim=axes) / gamma                     # sum(dy * xhat)
        # dx = (gamma * invstd) * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = yb / gamma
        k = (gamma * invstd).view(shape)
        dx = k * (dy - (dbeta.view(shape) + yb * (dgamma / gamma).view(shape)) / m)
        return dx, dgamma, dbeta, None, None, None


class _InPlaceABN(_BatchNorm):
    """BN + leaky ReLU (slope ``activation_param``) saving only its output; see the module docstring."""

    def __init__(self, num_features: int, eps: float = 1e-5, alpha: float | None = None, momentum: float | None = None,
                 activation_param: float = 0.01, eps_gamma: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, alpha=alpha, momentum=momentum, affine=True)
        if not activation_param > 0:
            raise ValueError(f"{type(self).__name__}: the leaky ReLU slope must be > 0 to be invertible, "
                             f"got {activation_param}")
        if not eps_gamma > 0:
            raise ValueError(f"{type(self).__name__}: eps_gamma must be > 0, got {eps_gamma}")
        self.slope, self.eps_gamma = float(activation_param), float(eps_gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.training:
            return F.leaky_relu(self._inference(x), self.slope, inplace=True)
        z, mu, var = InPlaceABNFunction.apply(x, self.weight, self.bias, self.eps, self.slope, self.eps_gamma)
        self._update_running(x, mu, var)
        return z

    def extra_repr(self) -> str:
        return super().extra_repr() + f", leaky_relu slope={self.slope}, eps_gamma={self.eps_gamma}"


class InPlaceABN(_InPlaceABN):
    """In-Place Activated BatchNorm for (N, C, H, W) inputs (1712.02616)."""

    _dims = (4,)


class InPlaceABN1d(_InPlaceABN):
    """In-Place Activated BatchNorm for (N, C) or (N, C, L) inputs."""

    _dims = (2, 3)
