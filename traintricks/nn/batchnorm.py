"""Batch normalization from its math (Ioffe & Szegedy 2015, arXiv:1502.03167), with a hand-derived backward.

Training, per channel ``c`` over the ``m = N * H * W`` values of the batch (the notes' (N, H, W) axes):

    mu_B = (1/m) sum x,   var_B = (1/m) sum (x - mu_B)^2,   xhat = (x - mu_B) / sqrt(var_B + eps)
    y = gamma * xhat + beta

Running estimates, with the notes' rate ``alpha`` (0.99) -- PyTorch's ``momentum`` is ``1 - alpha``:

    mu = alpha * mu + (1 - alpha) * mu_B,   var = alpha * var + (1 - alpha) * var_B * m / (m - 1)

(the running variance takes the unbiased batch variance, as PyTorch does). Inference uses ``mu``/``var``.

Backward (training), with ``g = dL/dy * gamma`` and sums over the channel's ``m`` values:

    dL/dx = (1 / (m * sqrt(var_B + eps))) * (m * g - sum(g) - xhat * sum(g * xhat))
    dL/dgamma = sum(dL/dy * xhat),   dL/dbeta = sum(dL/dy)

Inference is a fixed affine map: ``dL/dx = dL/dy * gamma / sqrt(var + eps)``.

Two implementations of the same math, chosen with ``impl=``:

* ``"reference"`` -- :class:`BatchNormFunction`, the equations above written out in tensor ops; readable,
  and the ground truth the tests check everything else against (gradcheck in float64);
* ``"fast"`` (default) -- the same forward and backward delegated to ATen's fused ``native_batch_norm``
  kernel and its registered derivative ``native_batch_norm_backward`` (one pass for the statistics, one
  for the output; the backward formula above in one kernel), with the running estimates updated inside
  the kernel. Tested equal to the reference (outputs, gradients, running estimates).

Non-finite inputs are caught from the batch mean (non-finite iff some input is) and raise ``ValueError``
naming the layer. On the fast path the running estimates have by then absorbed the bad batch (checking
first would cost a pass over the input), so continue from a checkpoint, as the trainer does.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NonFiniteInputError


def _axes(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.ndim))


def _shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.ndim - 2)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with the hand-derived backward above. Returns ``(y, mu_B, var_B)``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        axes, shape = _axes(x), _shape(x)
        mu = x.mean(dim=axes)
        xc = x - mu.view(shape)
        var = xc.square().mean(dim=axes)
        invstd = (var + eps).rsqrt()
        xhat = xc * invstd.view(shape)
        y = xhat * gamma.view(shape) + beta.view(shape)
        ctx.save_for_backward(xhat, gamma, invstd)
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
    def backward(ctx, dy, _dmu, _dvar):
        xhat, gamma, invstd = ctx.saved_tensors
        axes, shape = _axes(dy), _shape(dy)
        m = dy.numel() // dy.shape[1]
        dbeta = dy.sum(dim=axes)
        dgamma = (dy * xhat).sum(dim=axes)
        # g = dy * gamma: sum(g) = gamma * dbeta, sum(g * xhat) = gamma * dgamma
        k = (gamma * invstd).view(shape)
        dx = k * (dy - (dbeta.view(shape) + xhat * dgamma.view(shape)) / m)
        return dx, dgamma, dbeta, None


def check_impl(impl: str) -> str:
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    return impl


class _BatchNorm(nn.Module):
    """Batch norm over channel dim 1. ``alpha`` is the notes' running-average rate, default 0.99; PyTorch's
    ``momentum`` is ``1 - alpha`` (so the default equals ``torch.nn.BatchNorm2d(momentum=0.01)``, not
    PyTorch's default 0.1). Give either; giving both requires they agree."""

    _dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, alpha: float | None = None,
                 momentum: float | None = None, affine: bool = True, impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if alpha is not None and momentum is not None and abs(alpha - (1 - momentum)) > 1e-12:
            raise ValueError(f"alpha={alpha} and momentum={momentum} disagree (momentum = 1 - alpha)")
        alpha = alpha if alpha is not None else (1 - momentum if momentum is not None else 0.99)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.num_features, self.eps, self.alpha, self.affine = num_features, eps, alpha, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:  # fixed gamma = 1, beta = 0
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @property
    def momentum(self) -> float:
        """PyTorch's name for ``1 - alpha``."""
        return 1.0 - self.alpha

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim not in self._dims:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(f'{d}-D' for d in self._dims)} "
                             f"input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): input has {x.shape[1]} channels")
        if self.training and x.numel() // x.shape[1] < 2:
            raise ValueError(f"{type(self).__name__}({self.num_features}): a batch of one value per channel "
                             f"(shape {tuple(x.shape)}) has no variance to normalize with in training mode")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if not self.training:
            return self._inference(x)
        if getattr(self, "sync", False) and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            from ..parallel.sync_batchnorm import SyncBatchNormFunction
            y, mu, var, m = SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
            self._check_finite(x, mu)
            with torch.no_grad():
                unbiased = var * (m / (m - 1))
                self.running_mean.lerp_(mu.to(self.running_mean.dtype), 1 - self.alpha)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), 1 - self.alpha)
                self.num_batches_tracked += 1
            return y
        if self.impl == "fast":
            y, mu, _ = torch.native_batch_norm(x, self.weight, self.bias, self.running_mean,
                                                        self.running_var, True, 1.0 - self.alpha, self.eps)
            self._check_finite(x, mu)
            self.num_batches_tracked.add_(1)
            return y
        y, mu, var = BatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        self._update_running(x, mu, var)
        return y

    def _check_finite(self, x: torch.Tensor, stat: torch.Tensor) -> None:
        if not bool(torch.isfinite(stat).all()):
            raise NonFiniteInputError(f"{type(self).__name__}({self.num_features}): non-finite values (NaN or Inf) in the "
                             f"input of shape {tuple(x.shape)}")

    def _update_running(self, x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> None:
        """Check the batch statistics are finite, then move the running estimates towards them."""
        self._check_finite(x, mu + var)   # the sum is non-finite iff either is; running estimates untouched
        m = x.numel() // x.shape[1]
        with torch.no_grad():
            self.running_mean.lerp_(mu.to(self.running_mean.dtype), 1 - self.alpha)
            self.running_var.lerp_((var * (m / (m - 1))).to(self.running_var.dtype), 1 - self.alpha)
            self.num_batches_tracked += 1

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed affine map with the running estimates."""
        if self.impl == "fast":
            return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                                  False, 0.0, self.eps)
        shape = _shape(x)
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return x * scale.view(shape) + (self.bias - self.running_mean * scale).view(shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, alpha={self.alpha} (momentum={self.momentum:g}), "
                f"affine={self.affine}" + (", impl='reference'" if self.impl == "reference" else ""))


class BatchNorm1d(_BatchNorm):
    """Batch norm for (N, C) or (N, C, L) inputs; see the module docstring for the math."""

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm for (N, C, H, W) inputs; see the module docstring for the math."""

    _dims = (4,)
