"""Batch normalization from its math (Ioffe & Szegedy 2015, arXiv:1502.03167), with a hand-derived backward.

Training, per channel ``c`` over the ``m = N * L`` (or ``N * H * W``, ``N * D * H * W``) values of the batch:

    mu_B = (1/m) sum x,   var_B = (1/m) sum (x - mu_B)^2,   xhat = (x - mu_B) / sqrt(var_B + eps)
    y = gamma * xhat + beta

Running estimates, with PyTorch's ``momentum`` (default 0.1; the notes' rate ``alpha`` is ``1 - momentum``):

    mu = (1 - momentum) * mu + momentum * mu_B,   var = (1 - momentum) * var + momentum * var_B * m / (m - 1)

(the running variance takes the unbiased batch variance, as PyTorch does); ``momentum=None`` is the cumulative
average, ``momentum = 1 / num_batches_tracked``. Inference uses ``mu``/``var``.

Backward (training), with ``g = dL/dy * gamma`` and sums over the channel's ``m`` values:

    dL/dx = (1 / (m * sqrt(var_B + eps))) * (m * g - sum(g) - xhat * sum(g * xhat))
    dL/dgamma = sum(dL/dy * xhat),   dL/dbeta = sum(dL/dy)

Inference is a fixed affine map: ``dL/dx = dL/dy * gamma / sqrt(var + eps)``.

The layers are drop-in replacements for ``torch.nn.BatchNorm1d/2d/3d``: the same constructor
``(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None, dtype=None, *,
bias=True)``, the same parameters, buffers and ``state_dict`` keys, inputs, outputs, errors, and subclasses of
``torch.nn.BatchNorm1d/2d/3d`` (so ``isinstance(m, nn.BatchNorm2d)``, ``SyncBatchNorm.convert_sync_batchnorm``,
``swa_utils.update_bn``, ``torch.fx`` and ``torch.ao.quantization.fuse_modules`` treat them as PyTorch's; our
``forward`` and input check come first in the method order). Empty batches are counted in ``num_batches_tracked``
and leave the running estimates unchanged, as PyTorch's kernel does. Keyword-only additions:

* ``alpha`` -- the notes' running-average rate, ``momentum = 1 - alpha`` rounded to 15 significant digits
  (``alpha=0.9`` gives ``momentum == 0.1`` exactly); the ``alpha`` property reads and sets it;
* ``impl`` -- ``"fast"`` (default): PyTorch's batch-norm kernels (``F.batch_norm``), bit-for-bit PyTorch's
  result; ``"reference"``: :class:`BatchNormFunction`, the equations above written out in tensor ops (readable,
  the ground truth the tests check the kernels against, gradcheck and gradgradcheck in float64), computed in
  float32 for bf16/fp16 inputs and returned in the dtype ``F.batch_norm`` returns (the input's; under autocast
  whatever autocast makes of it);
* ``check_finite`` -- raise :class:`~traintricks.errors.NonFiniteInputError` on NaN/Inf inputs. Off by default:
  the check reads a value on the host (a device synchronization and a ``torch.compile`` graph break), so the
  forward pass is synchronization-free unless asked.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NonFiniteInputError


def _axes(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.ndim))


def _shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.ndim - 2)


def _stats(x: torch.Tensor, eps: float):
    """Batch mean, biased variance, ``1 / sqrt(var + eps)`` and ``xhat`` per channel (dim 1), in tensor ops."""
    axes, shape = _axes(x), _shape(x)
    mu = x.mean(dim=axes)
    xc = x - mu.view(shape)
    var = xc.square().mean(dim=axes)
    invstd = (var + eps).rsqrt()
    return mu, var, invstd, xc * invstd.view(shape)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with the hand-derived backward above. Returns ``(y, mu_B, var_B)`` (``var_B``
    biased). ``x``: (N, C, *) floating; ``gamma``, ``beta``: (C,).

    The backward recomputes the statistics from the saved ``x`` in tensor ops, so with ``create_graph=True`` it
    is differentiated again correctly (double backward; gradgradcheck in float64)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        mu, var, _, xhat = _stats(x, eps)
        shape = _shape(x)
        y = xhat * gamma.view(shape) + beta.view(shape)
        ctx.save_for_backward(x, gamma)
        ctx.eps = eps
        ctx.mark_non_differentiable(mu, var)
        return y, mu, var

    @staticmethod
    def backward(ctx, dy, _dmu, _dvar):
        x, gamma = ctx.saved_tensors
        _, _, invstd, xhat = _stats(x, ctx.eps)
        axes, shape = _axes(dy), _shape(dy)
        m = dy.numel() // dy.shape[1]
        dbeta = dy.sum(dim=axes)
        dgamma = (dy * xhat).sum(dim=axes)
        # g = dy * gamma: sum(g) = gamma * dbeta, sum(g * xhat) = gamma * dgamma
        k = (gamma * invstd).view(shape)
        dx = k * (dy - (dbeta.view(shape) + xhat * dgamma.view(shape)) / m)
        return dx, dgamma, dbeta, None


def compute_dtype(x: torch.Tensor, *params: torch.Tensor | None) -> torch.dtype:
    """The dtype the reference implementations compute in: ``x``'s promoted with the parameters', at least
    float32 (bf16/fp16 inputs are normalized in float32, as PyTorch's kernels accumulate)."""
    dt = x.dtype
    for p in params:
        if p is not None and p.is_floating_point():
            dt = torch.promote_types(dt, p.dtype)
    return torch.float32 if dt in (torch.float16, torch.bfloat16) else dt


def out_dtype(x: torch.Tensor, probe) -> torch.dtype:
    """The dtype PyTorch's own functional op returns for ``x`` here: ``x.dtype`` (also for bf16/fp16 inputs with
    float32 parameters), except where autocast changes it (e.g. CUDA autocast runs ``layer_norm`` and
    ``group_norm`` in float32). Under autocast ``probe`` -- the op, given an empty tensor of ``x``'s dtype and
    device -- tells (a shape-only call: no data, no host synchronization)."""
    kind = x.device.type
    if not (torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)):
        return x.dtype
    return probe(torch.empty((0, 1, 2), dtype=x.dtype, device=x.device)).dtype


def check_impl(impl: str) -> str:
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    return impl


def resolve_momentum(name: str, momentum: float | None, alpha: float | None) -> float | None:
    """PyTorch's ``momentum`` from the arguments: ``alpha`` (the notes' rate), when given, sets ``1 - alpha``.
    Giving both raises unless they agree or ``momentum`` is left at its default 0.1."""
    if alpha is None:
        return momentum
    alpha = float(alpha)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"{name}: alpha must be in [0, 1), got {alpha}")
    if momentum is not None and momentum != 0.1 and abs(alpha - (1 - momentum)) > 1e-12:
        raise ValueError(f"{name}: alpha={alpha} and momentum={momentum} disagree (momentum = 1 - alpha)")
    return complement(alpha)


def complement(rate: float) -> float:
    """``1 - rate`` rounded to 15 significant digits, so the decimal a user wrote reads back exactly:
    ``1 - 0.9`` is 0.09999999999999998 in binary floating point, ``complement(0.9)`` is 0.1 (and
    ``complement(complement(0.9))`` is 0.9). The rounding moves the value by less than 1e-15 relative."""
    return float(f"{1.0 - float(rate):.15g}")


class ChannelMismatchError(ValueError, RuntimeError):
    """The input's channel count (dim 1) differs from the layer's ``num_features``. A ``RuntimeError`` as
    PyTorch's kernels raise for it, and a ``ValueError`` as this package raises for bad inputs."""


def _fx_leaf(module: nn.Module, x) -> object | None:
    """Under ``torch.fx`` symbolic tracing, record ``module`` as one ``call_module`` node, as the tracer does for
    PyTorch's own norm layers (it traces into modules outside ``torch.nn``). ``None`` when ``module`` is the
    traced root (which, like PyTorch's, cannot be traced through its input checks)."""
    tracer = x.tracer
    if getattr(tracer, "root", None) is module:
        return None
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (x,), {})


class _BatchNorm(nn.modules.batchnorm._NormBase):
    """What every traintricks batch norm shares: PyTorch's constructor, parameters and buffers (``_NormBase``),
    input checks with PyTorch's errors, the running-estimate update (``momentum``, or the cumulative average for
    ``momentum=None``, without a host synchronization), the keyword-only ``alpha``, ``impl`` and
    ``check_finite``, and synchronized statistics (:func:`traintricks.parallel.sync_batchnorm_`).

    Plain batch norm also derives from ``torch.nn.BatchNorm1d/2d/3d``; the variants (batch renorm,
    norm + activation, in-place ABN) derive from ``_NormBase`` only, so PyTorch's tools that would replace or
    re-run them as a plain batch norm (``SyncBatchNorm.convert_sync_batchnorm``) leave them alone."""

    _dims: tuple[int, ...] = ()
    #: whether :func:`traintricks.parallel.sync_batchnorm_` can synchronize this layer's statistics
    _supports_sync = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 alpha: float | None = None, impl: str = "fast", check_finite: bool = False,
                 cumulative_warmup: bool = False) -> None:
        if isinstance(eps, str):
            raise TypeError(f"{type(self).__name__}: eps must be a number, got {eps!r} (the options after "
                            "track_running_stats, dtype are keyword-only)")
        momentum = resolve_momentum(type(self).__name__, momentum, alpha)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype,
                         bias=bias)
        self.impl = check_impl(impl)
        self.check_finite = bool(check_finite)
        self.cumulative_warmup = bool(cumulative_warmup)
        self.sync = False

    @property
    def alpha(self) -> float | None:
        """The notes' running-average rate, ``1 - momentum`` (``None`` for the cumulative average,
        ``momentum=None``); setting it sets ``momentum`` (``alpha=0.9`` gives ``momentum == 0.1`` exactly)."""
        return None if self.momentum is None else complement(self.momentum)

    @alpha.setter
    def alpha(self, value: float | None) -> None:
        self.momentum = None if value is None else resolve_momentum(type(self).__name__, None, value)

    # -- checks -----------------------------------------------------------------------------------------------
    def _label(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in self._dims:
            raise ValueError(f"{self._label()}: expected {' or '.join(f'{d}D' for d in self._dims)} input "
                             f"(got {input.dim()}D input)")

    def _bn_training(self) -> bool:
        """Normalize with batch statistics: in training, and at inference without running estimates (as torch)."""
        return self.training or (self.running_mean is None and self.running_var is None)

    def _check(self, x: torch.Tensor) -> bool:
        """PyTorch's input checks (shape-only: no host synchronization); returns whether batch statistics are used."""
        self._check_input_dim(x)
        has_per_channel = self.weight is not None or self.bias is not None or self.running_mean is not None
        if has_per_channel and x.shape[1] != self.num_features:
            raise ChannelMismatchError(f"{self._label()}: input has {x.shape[1]} channels (shape "
                                       f"{tuple(x.shape)}), expected {self.num_features}")
        bn_training = self._bn_training()
        if bn_training:
            if self.eps <= 0.0:
                raise ValueError(f"{self._label()}: batch_norm eps must be positive during training, but got "
                                 f"{self.eps}")
            size = x.shape
            if size[0] * size[2:].numel() == 1:
                raise ValueError(f"{self._label()}: Expected more than 1 value per channel when training, got "
                                 f"input size {size} (one value per channel has no variance to normalize with)")
        elif self.eps < 0.0:
            raise ValueError(f"{self._label()}: batch_norm eps must be non-negative, but got {self.eps}")
        if self.check_finite and not bool(torch.isfinite(x).all()):     # opt-in: a host synchronization
            raise NonFiniteInputError(f"{self._label()}: non-finite values (NaN or Inf) in the input of shape "
                                      f"{tuple(x.shape)}")
        return bn_training

    # -- running estimates -----------------------------------------------------------------------------------
    def _tracking(self) -> bool:
        """Whether this forward updates the running estimates (training with ``track_running_stats``)."""
        return self.training and self.track_running_stats

    def _step_factor(self):
        """Count this batch (``num_batches_tracked += 1``) and return the update rate: ``momentum``; for
        ``momentum=None`` the cumulative ``1 / t`` (``t = num_batches_tracked``); with ``cumulative_warmup``
        ``max(momentum, 1 / t)``. The last two as 0-d tensors (no host read)."""
        if self.num_batches_tracked is None:
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is not None and not self.cumulative_warmup:
            return self.momentum
        inv_t = self.num_batches_tracked.to(self.running_mean.dtype if self.running_mean is not None
                                            else torch.get_default_dtype()).reciprocal()
        return inv_t if self.momentum is None else inv_t.clamp(min=self.momentum)

    @torch.no_grad()
    def _track(self, mu: torch.Tensor, var_unbiased: torch.Tensor) -> None:
        """Move the running estimates towards this batch's mean and unbiased variance (training only)."""
        if not self._tracking():
            return
        f = self._step_factor()
        if self.running_mean is not None:
            self.running_mean.lerp_(mu.to(self.running_mean.dtype), f)
            self.running_var.lerp_(var_unbiased.to(self.running_var.dtype), f)

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)`` as tensors: the parameters, or 1 and 0 where ``affine``/``bias`` is off."""
        ref = self.weight if self.weight is not None else (self.running_mean if self.running_mean is not None else x)
        dt = ref.dtype if ref.is_floating_point() else x.dtype
        c = x.shape[1]
        w = self.weight if self.weight is not None else torch.ones(c, dtype=dt, device=x.device)
        b = self.bias if self.bias is not None else torch.zeros(c, dtype=dt, device=x.device)
        return w, b

    # -- batch norm ------------------------------------------------------------------------------------------
    def _normalize(self, x: torch.Tensor, bn_training: bool) -> torch.Tensor:
        """Batch norm of ``x`` (checked), updating the running estimates in training."""
        if bn_training and getattr(self, "sync", False):
            from .sync_batchnorm import distributed_world
            if distributed_world() > 1:
                return self._sync_normalize(x)
        if self.impl == "reference" and x.numel() > 0:
            # torch's dtype rules: computed in float32 (or float64) and returned in the dtype F.batch_norm gives
            out = out_dtype(x, lambda e: F.batch_norm(e, None, None, None, None, True, 0.0, 1.0))
            w, b = self._affine(x)
            cd = compute_dtype(x, w)
            xc, w, b = x.to(cd), w.to(cd), b.to(cd)
            if bn_training:
                y, mu, var = BatchNormFunction.apply(xc, w, b, self.eps)
                m = x.numel() // x.shape[1]
                self._track(mu, var * (m / (m - 1)))
                return y.to(out)
            shape = _shape(x)
            scale = w * (self.running_var.to(cd) + self.eps).rsqrt()
            return (xc * scale.view(shape) + (b - self.running_mean.to(cd) * scale).view(shape)).to(out)
        # PyTorch's own computation (torch.nn.modules.batchnorm._BatchNorm.forward), with the cumulative average
        # as tensor ops instead of its host read of num_batches_tracked
        rm = self.running_mean if not self.training or self.track_running_stats else None
        rv = self.running_var if not self.training or self.track_running_stats else None
        factor = 0.0 if self.momentum is None else self.momentum
        if self._tracking():
            factor = self._step_factor()
            if isinstance(factor, torch.Tensor) and (rm is None or x.numel() == 0):
                # an empty batch has no statistics: torch counts it but leaves the estimates (its kernel skips
                # the update), whatever the rate
                factor = 0.0
            if isinstance(factor, torch.Tensor):       # cumulative: exact batch statistics, then the average
                mean_b, var_b = torch.zeros_like(rm), torch.ones_like(rv)
                y = F.batch_norm(x, mean_b, var_b, self.weight, self.bias, True, 1.0, self.eps)
                with torch.no_grad():
                    rm.lerp_(mean_b, factor)
                    rv.lerp_(var_b, factor)
                return y
        return F.batch_norm(x, rm, rv, self.weight, self.bias, bn_training, factor, self.eps)

    def _sync_normalize(self, x: torch.Tensor) -> torch.Tensor:
        from .sync_batchnorm import SyncBatchNormFunction
        w, b = self._affine(x)
        y, mu, var, m = SyncBatchNormFunction.apply(x, w, b, self.eps)
        self._track(mu, var * (m / (m - 1)))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            node = _fx_leaf(self, x)
            if node is not None:
                return node
        return self._normalize(x, self._check(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + (", impl='reference'" if self.impl == "reference" else "") + \
            (", check_finite=True" if self.check_finite else "") + \
            (", cumulative_warmup=True" if self.cumulative_warmup else "")


class _PlainBatchNorm(_BatchNorm, nn.modules.batchnorm._BatchNorm):
    """Plain batch norm: ours and PyTorch's ``_BatchNorm`` (every ``isinstance`` rule for batch norms sees it).
    Our methods come first in the method order (``forward``, ``_check_input_dim``, ``extra_repr``)."""


class BatchNorm1d(_PlainBatchNorm, nn.BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) inputs, as ``torch.nn.BatchNorm1d``; see the module docstring.

    Args: ``num_features`` C; ``eps`` added to the variance (> 0 in training); ``momentum`` the running-estimate
    rate (``None``: cumulative average); ``affine`` learnable ``weight``/``bias`` (``bias=False``: weight only);
    ``track_running_stats``; ``device``/``dtype`` of the parameters and buffers; keyword-only ``alpha``
    (= 1 - momentum), ``impl`` ("fast" | "reference"), ``check_finite``.

    Raises ``ValueError`` for another input rank, a training batch of one value per channel, ``eps <= 0`` in
    training; :class:`ChannelMismatchError` (a ``ValueError`` and ``RuntimeError``) for a wrong channel count.
    """

    _dims = (2, 3)


class BatchNorm2d(_PlainBatchNorm, nn.BatchNorm2d):
    """Batch norm over (N, C, H, W) inputs, as ``torch.nn.BatchNorm2d``; arguments and errors as
    :class:`BatchNorm1d`."""

    _dims = (4,)


class BatchNorm3d(_PlainBatchNorm, nn.BatchNorm3d):
    """Batch norm over (N, C, D, H, W) inputs, as ``torch.nn.BatchNorm3d``; arguments and errors as
    :class:`BatchNorm1d`."""

    _dims = (5,)


def _register_fusers() -> None:
    """Let ``torch.ao.quantization.fuse_modules`` fuse conv/linear + our batch norm (+ ReLU) as PyTorch's: it looks
    fuser methods up by exact module type. Our layer is handed to PyTorch's fuser as an equal ``nn.BatchNormNd``."""
    try:
        from torch.ao.quantization import fuser_method_mappings as fmm
    except ImportError:      # pragma: no cover - quantization not built
        return
    table = getattr(fmm, "_DEFAULT_OP_LIST_TO_FUSER_METHOD", None)
    if not isinstance(table, dict):     # pragma: no cover - a torch without the table
        return
    ours = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}
    for key, fn in list(table.items()):
        if any(k in ours for k in key):
            new_key = tuple(ours.get(k, k) for k in key)
            table.setdefault(new_key, _as_torch_fuser(fn))


def as_torch_batchnorm(bn: _PlainBatchNorm) -> nn.modules.batchnorm._BatchNorm:
    """PyTorch's ``nn.BatchNorm1d/2d/3d`` with the same arguments, mode and state as ``bn`` (shared tensors)."""
    cls = {BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d, BatchNorm3d: nn.BatchNorm3d}[type(bn)]
    return share_batchnorm_state(bn, cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                                         device="meta", bias=bn.bias is not None))


def share_batchnorm_state(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst`` (a batch norm built with ``src``'s arguments, e.g. on the meta device) given ``src``'s parameters
    and buffers -- the same tensors, not copies --, its training mode and quantization config; returns ``dst``."""
    if src.affine:
        dst.register_parameter("weight", src.weight)
        dst.register_parameter("bias", src.bias)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        dst._buffers[name] = src._buffers.get(name)
    dst.train(src.training)
    if hasattr(src, "qconfig"):
        dst.qconfig = src.qconfig
    return dst


def _as_torch_fuser(fn):
    def fuse(is_qat, *mods):
        return fn(is_qat, *[as_torch_batchnorm(m) if isinstance(m, _PlainBatchNorm) else m for m in mods])
    fuse.__name__ = getattr(fn, "__name__", "fuse")
    return fuse


_register_fusers()

# The public names of what other packages build on: the base of every traintricks batch norm (In-Place ABN in
# traintricks.memory derives from it) and the torch.fx leaf recording that every such layer uses.
BatchNormBase = _BatchNorm
fx_leaf = _fx_leaf
