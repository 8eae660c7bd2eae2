"""First-order optimizers from their update rules, as ``torch.optim.Optimizer`` subclasses.

Each class takes the arguments of its ``torch.optim`` namesake (same names, order, defaults and checks;
``inspect.signature`` equal) and keeps the same per-parameter state under the same keys, so ``state_dict``s
move both ways. The update of a parameter group runs on one of three paths, each used only where it is
correct for the tensors at hand:

* **fused**: ATen's fused CPU/GPU kernel for exactly this update (``torch._fused_sgd_``, ``_fused_adam_``,
  ``_fused_adamw_``, ``_fused_adagrad_``). These kernels walk the flat memory of each tensor, so they are
  given only parameters whose parameter, gradient and state tensors are dense and laid out alike (same
  strides: contiguous or all channels_last); every other tensor of the group goes to the multi-tensor path.
* **foreach**: multi-tensor ``torch._foreach_*`` operations (one kernel launch per operation for the group);
  correct for any strides.
* **per tensor**: the same update one tensor at a time (``foreach=False``), and with autograd enabled when
  ``differentiable=True`` (the update is then differentiable w.r.t. parameters, gradients and state).

Default (``foreach=None, fused=None``): fused where ATen has the kernel (SGD only for large tensors, where
it wins), multi-tensor otherwise. ``fused=True`` forces the kernel (``RuntimeError`` for non-floating or
unsupported-device parameters, as torch), ``foreach=True`` the multi-tensor path.

State is per parameter and created lazily the first time a parameter has a gradient (Adagrad: at
construction, as torch): step counts, momentum buffers and bias corrections of a parameter do not depend on
whether other parameters had gradients before. ``maximize`` (ascend), tensor ``lr`` (1-element, read once
per step) and a ``step`` stored as a number by older ``state_dict``s are handled as torch does.
``capturable=True``: like torch it raises at ``step`` for CPU parameters; on accelerators the step counters
live on the device and the bias corrections are computed there (no host read). ``step`` counters follow
torch's device rule for the path taken (:meth:`Optimizer._step_home`).

Under ``torch.compile(opt.step)`` the default path is traced as multi-tensor operations with step counts,
bias corrections and tensor hyper-parameters kept as tensors (no host read, no per-step constant in the
graph), ``foreach=False`` as per-tensor operations; ``fused=True`` runs eagerly (as torch's fused step).
The five classes with a torch twin are subclasses of it (``isinstance`` checks hold).

Notation: ``g`` gradient (negated under ``maximize``), ``lr`` learning rate, ``wd`` weight decay, ``t`` the
parameter's step count from 1.

**SGD with momentum** (Polyak 1964; Nesterov as in Sutskever et al. 2013, the notes' form)::

    g <- g + wd * theta
    b <- mu * b + (1 - dampening) * g           (b = g at the parameter's first step)
    d <- g + mu * b  (nesterov)  or  b
    theta <- theta - lr * d

The notes write momentum as a velocity ``V <- mu V - lr g(theta + mu V)``, ``theta <- theta + V`` (the
gradient taken at the look-ahead point). With ``phi = theta + mu V`` (the look-ahead parameters) this is
exactly the update above on ``phi`` with ``b = -V / lr`` (for a constant rate): we store ``phi`` and the
tests check both trajectories coincide.

**Adagrad** (Duchi, Hazan & Singer 2011): ``s <- s + g^2``; ``theta <- theta - lr_t g / (sqrt(s) + eps)``
with ``lr_t = lr / (1 + (t - 1) * lr_decay)``.

**RMSprop** (Hinton, Coursera lecture 6e): ``s <- a s + (1 - a) g^2``; optionally centred with
``m <- a m + (1 - a) g`` and ``s - m^2`` in place of ``s``; ``d = g / (sqrt(s) + eps)``; with momentum
``b <- mu b + d``, ``theta <- theta - lr b``, else ``theta <- theta - lr d``.

**Adam** (Kingma & Ba 2015, arXiv:1412.6980)::

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

with L2 weight decay added to the gradient; **AdamW** (Loshchilov & Hutter 2019, arXiv:1711.05101)
decouples it: ``theta <- theta (1 - lr wd)`` before the Adam step. ``amsgrad`` (Reddi et al. 2018) uses the
running maximum of ``v``.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor
from torch.optim.optimizer import (_get_capturable_supported_devices, _get_fused_kernels_supported_devices,
                                   _get_scalar_dtype)


def _check_range(name: str, value: float, low: float, high: float | None = None, high_open: bool = True) -> None:
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:
        rng = f"[{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {'in ' + rng if high is not None else rng}, got {value}")


def _check_lr(lr) -> None:
    """torch.optim's checks of a learning rate: a tensor ``lr`` has one element, and ``lr >= 0``."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    _nonneg("learning rate", lr)


def _nonneg(what: str, value) -> None:
    """torch.optim's check and message: ``ValueError("Invalid <what>: <value>")`` unless ``value >= 0``."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_betas(betas) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)`` for the optimizers without a torch twin: two numbers in ``[0, 1)``."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    return float(betas[0]), float(betas[1])


def _check_torch_betas(betas, foreach, capturable) -> tuple:
    """``torch.optim.Adam``'s checks on ``betas`` (floats or 1-element tensors, each in [0, 1)), same messages."""
    for i in (0, 1):
        if not 0.0 <= betas[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
    if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, Tensor) for b in betas)):
        raise ValueError("betas must be either both floats or both Tensors")
    for i in (0, 1):
        if isinstance(betas[i], Tensor):
            if foreach and not capturable:
                raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            if betas[i].numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
    return tuple(b.squeeze() if isinstance(b, Tensor) and b.dim() else b for b in betas)


def _compiling() -> bool:
    """True while ``torch.compile`` (dynamo) traces the step: no host reads of tensors then (a ``float(t)``
    breaks the graph and the number it yields is baked into the next one)."""
    return torch.compiler.is_compiling()


def _num(x):
    """A hyper-parameter as a Python number (a 1-element CPU tensor ``lr`` or beta is read once per step); while
    compiling, and for a tensor on an accelerator (a read would synchronize), a tensor stays a 0-d tensor
    (the ops below and ATen's fused kernels take tensor scalars)."""
    if isinstance(x, Tensor):
        return x.reshape(()) if _compiling() or not x.is_cpu else float(x)
    return x


def _lr_over(lr, d):
    """``lr / d`` as torch computes it: in the tensor's dtype when ``lr`` is a tensor (float32 rounding); a
    0-d tensor when ``d`` is one (a step count kept on the device or traced) or while compiling."""
    if isinstance(lr, Tensor):
        lr = lr.reshape(())
        if lr.is_cpu and not isinstance(d, Tensor) and not _compiling():
            return float(lr / d)
    return lr / d


def _step_values(steps: list[Tensor]) -> list:
    """Each parameter's step count ``t`` for bias corrections and decays: Python numbers when the counters are
    host (CPU) tensors and no graph is being traced (reading a CPU scalar costs nothing and keeps the
    coefficients in double precision, as torch's eager paths); otherwise the 0-d tensors themselves, so that
    nothing is read on the host: under ``torch.compile`` (as torch's ``_get_value``) and for counters on an
    accelerator (fused / capturable). ``1 - b ** t`` etc. then are tensors, and the ops take them."""
    if _compiling() or any(not s.is_cpu for s in steps):
        return list(steps)
    return [float(s) for s in steps]


def _is_t(x) -> bool:
    return isinstance(x, Tensor) or (isinstance(x, (list, tuple)) and any(isinstance(v, Tensor) for v in x))


@torch.compiler.disable
def _eagerly(fn, *args):
    """Run ``fn(*args)`` outside a ``torch.compile`` graph (a graph break). ATen's fused optimizer kernels have
    no fake (meta) implementation, so dynamo cannot trace them; torch.optim's ``fused=True`` step falls back
    to eager under ``torch.compile`` the same way."""
    return fn(*args)


def adam_moments_(m: list[Tensor], v: list[Tensor], grads: list[Tensor], b1: float, b2: float, ops=None) -> None:
    """Adam's moment estimates in place: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``."""
    ops = ops or _FOREACH
    ops.lerp_(m, grads, 1 - b1)
    ops.mul_(v, b2)
    ops.addcmul_(v, grads, grads, value=1 - b2)


def dense_alike(tensors: Iterable[Tensor]) -> bool:
    """True when the tensors have the same strides and those strides are dense and non-overlapping
    (contiguous, channels_last, any permutation without gaps): then an elementwise kernel may walk their
    flat memory side by side, as ATen's fused optimizer kernels do."""
    tensors = list(tensors)
    if all(t.is_contiguous() for t in tensors):
        return True
    stride = tensors[0].stride()
    if any(t.stride() != stride or t.shape != tensors[0].shape for t in tensors[1:]):
        return False
    expected = 1
    for size, st in sorted(zip(tensors[0].shape, stride), key=lambda s: s[1]):
        if size == 1:
            continue
        if st != expected:
            return False
        expected *= size
    return True


def _at(v, i):
    return v[i] if isinstance(v, (list, tuple)) else v


class _ForeachOps:
    """The multi-tensor path: one ``torch._foreach_*`` call per operation. ``tmp_*`` ops act on temporaries
    (in place here; out of place on the per-tensor path, where autograd may need their inputs). Scalars
    (``alpha``, ``value``, ``s``) may be 0-d tensors, or lists of them (step-dependent coefficients without a
    host read): those are applied by a multiplication, as torch's capturable / compiled paths do."""

    neg, sqrt, clone = torch._foreach_neg, torch._foreach_sqrt, lambda xs: [x.clone() for x in xs]

    @staticmethod
    def add(xs, ys, alpha=1.0):
        if _is_t(alpha):
            return torch._foreach_add(xs, torch._foreach_mul(ys, alpha))
        return torch._foreach_add(xs, ys, alpha=alpha)

    @staticmethod
    def add_(xs, ys, alpha=1.0):
        if _is_t(alpha):
            torch._foreach_add_(xs, torch._foreach_mul(ys, alpha))
        else:
            torch._foreach_add_(xs, ys, alpha=alpha)
        return xs

    @staticmethod
    def mul_(xs, s):
        torch._foreach_mul_(xs, s)

    @staticmethod
    def lerp_(xs, ys, w):
        if _is_t(w):                                   # x + w (y - x)
            torch._foreach_add_(xs, torch._foreach_mul(torch._foreach_sub(ys, xs), w))
        else:
            torch._foreach_lerp_(xs, ys, w)

    @staticmethod
    def addcmul_(xs, a, b, value=1.0):
        if _is_t(value):
            torch._foreach_addcmul_(xs, torch._foreach_mul(a, value), b)
        else:
            torch._foreach_addcmul_(xs, a, b, value=value)

    @staticmethod
    def addcmul(xs, a, b, value=1.0):
        if _is_t(value):
            return torch._foreach_addcmul(xs, torch._foreach_mul(a, value), b)
        return torch._foreach_addcmul(xs, a, b, value=value)

    @staticmethod
    def addcdiv_(xs, a, b, value=1.0):
        if _is_t(value):
            torch._foreach_addcdiv_(xs, torch._foreach_mul(a, value), b)
        elif isinstance(value, list):
            torch._foreach_addcdiv_(xs, a, b, value)
        else:
            torch._foreach_addcdiv_(xs, a, b, value=value)

    @staticmethod
    def maximum_(xs, ys):
        torch._foreach_maximum_(xs, ys)

    @staticmethod
    def tmp_add(xs, s):
        torch._foreach_add_(xs, s)
        return xs

    @staticmethod
    def tmp_div(xs, s):
        torch._foreach_div_(xs, s)
        return xs

    @staticmethod
    def tmp_sqrt(xs):
        torch._foreach_sqrt_(xs)
        return xs


class _PerTensorOps:
    """The per-tensor path (``foreach=False``; ``differentiable=True`` runs it under autograd). Tensor scalars
    as in :class:`_ForeachOps`."""

    @staticmethod
    def neg(xs):
        return [x.neg() for x in xs]

    @staticmethod
    def sqrt(xs):
        return [x.sqrt() for x in xs]

    @staticmethod
    def clone(xs):
        return [x.clone() for x in xs]

    @staticmethod
    def add(xs, ys, alpha=1.0):
        if isinstance(alpha, Tensor):
            return [x + y * alpha for x, y in zip(xs, ys)]
        return [x.add(y, alpha=alpha) for x, y in zip(xs, ys)]

    @staticmethod
    def add_(xs, ys, alpha=1.0):
        for x, y in zip(xs, ys):
            if isinstance(alpha, Tensor):
                x.add_(y * alpha)
            else:
                x.add_(y, alpha=alpha)
        return xs

    @staticmethod
    def mul_(xs, s):
        for i, x in enumerate(xs):
            x.mul_(_at(s, i))

    @staticmethod
    def lerp_(xs, ys, w):
        for x, y in zip(xs, ys):
            x.lerp_(y, w)

    @staticmethod
    def addcmul_(xs, a, b, value=1.0):
        for x, u, v in zip(xs, a, b):
            if isinstance(value, Tensor):
                x.addcmul_(u * value, v)
            else:
                x.addcmul_(u, v, value=value)

    @staticmethod
    def addcmul(xs, a, b, value=1.0):
        if isinstance(value, Tensor):
            return [x.addcmul(u * value, v) for x, u, v in zip(xs, a, b)]
        return [x.addcmul(u, v, value=value) for x, u, v in zip(xs, a, b)]

    @staticmethod
    def addcdiv_(xs, a, b, value=1.0):
        for i, (x, u, v) in enumerate(zip(xs, a, b)):
            s = _at(value, i)
            if isinstance(s, Tensor):
                x.addcdiv_(u * s, v)
                continue
            # under autograd the numerator (state, e.g. Adam's m) is saved for backward: a copy, as torch
            # does, so the next step's in-place update of the state does not invalidate it
            x.addcdiv_(u.clone() if u.requires_grad else u, v, value=s)

    @staticmethod
    def maximum_(xs, ys):
        for x, y in zip(xs, ys):
            x.copy_(torch.maximum(x, y))

    @staticmethod
    def tmp_add(xs, s):
        return [x.add(_at(s, i)) for i, x in enumerate(xs)]

    @staticmethod
    def tmp_div(xs, s):
        return [x.div(_at(s, i)) for i, x in enumerate(xs)]

    @staticmethod
    def tmp_sqrt(xs):
        return [x.sqrt() for x in xs]


_FOREACH, _PER_TENSOR = _ForeachOps(), _PerTensorOps()


class Optimizer(torch.optim.Optimizer):
    """Shared parts: torch's checks of ``lr``/``weight_decay`` and of the path options at construction;
    dense real gradients at each step; lazily created per-parameter state; the path of a group; loading
    ``state_dict``s written by torch or by older traintricks (missing group keys get this optimizer's
    defaults; a ``step`` stored as a number becomes a tensor)."""

    #: ATen's fused kernel for this update, if any (``fused=None`` uses it by default)
    has_fused = False
    #: device types on which the default path uses it (None: every device ATen has the kernel for)
    fused_devices: tuple[str, ...] | None = None

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        _check_lr(defaults.get("lr", 0.0))
        _nonneg("weight_decay value", defaults.get("weight_decay", 0.0))
        # torch.optim.Optimizer's, not the torch twin's (a base class of ours, see _TorchTwin)
        torch.optim.Optimizer.__init__(self, params, defaults)
        if defaults.get("fused"):
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict) -> None:
        torch.optim.Optimizer.__setstate__(self, state)        # our defaults below, not the twin's
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key != "lr":
                    group.setdefault(key, value)
            self._fix_group(group)
            for p in group["params"]:
                st = self.state.get(p)
                if not st or "step" not in st:
                    continue
                device, dtype = self._step_home(group, p)
                if not torch.is_tensor(st["step"]):            # older state_dicts: a number
                    st["step"] = torch.tensor(float(st["step"]), dtype=dtype, device=device)
                elif device.type != "cpu" and (st["step"].device != device or st["step"].dtype != dtype):
                    # torch moves it for fused / capturable groups (float32 on the parameter's device); ours
                    # also for the default path's kernels on an accelerator (they read it there)
                    st["step"] = st["step"].to(device=device, dtype=dtype)

    def _step_home(self, group: dict, p: Tensor) -> tuple[torch.device, torch.dtype]:
        """Device and dtype of parameter ``p``'s ``step`` counter: torch's rule (note "special device hosting
        for step" in ``torch/optim/adam.py``) for the path the update takes. With ``fused=True`` or
        ``capturable=True`` on the parameter's device (float32 when fused): the kernels and CUDA graphs read
        it there. On our default path (``fused=None``) the same when ATen's fused kernel takes the parameter
        on an accelerator (torch's default there is the multi-tensor path, with the counter on the CPU; our
        kernels need it on the device). Otherwise on the CPU in the default scalar dtype, where the host reads
        it for free. On the CPU the kernels take a CPU counter: nothing moves."""
        fused = bool(group.get("fused"))
        if group.get("capturable") or fused:
            return p.device, _get_scalar_dtype(fused)
        if p.device.type != "cpu" and self._kernel_takes(group, p):
            return p.device, torch.float32
        return torch.device("cpu"), _get_scalar_dtype()

    def _kernel_takes(self, group: dict, p: Tensor) -> bool:
        """Whether the default path may give ``p`` to ATen's fused kernel (its layout is checked per step)."""
        return (self.has_fused and self._path(group) == "auto" and torch.is_floating_point(p)
                and p.device.type in (self.fused_devices or _get_fused_kernels_supported_devices()))

    def _fix_group(self, group: dict) -> None:
        """Group keys an optimizer pins after loading (AdamW: ``decoupled_weight_decay``)."""

    def _group_tensors(self, group: dict) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            params.append(p)
            grads.append(p.grad)
        if group.get("capturable") and params and not _compiling():    # compiling: the compiler checks (as torch)
            ok = _get_capturable_supported_devices()
            if any(p.device.type not in ok for p in params):
                raise AssertionError(f"If capturable=True, params and state_steps must be on supported devices: {ok}.")
        return params, grads

    def _state_list(self, params: list[Tensor], key: str, init=None) -> list[Tensor]:
        out = []
        for p in params:
            st = self.state[p]
            if st.get(key) is None:
                st[key] = init(p) if init is not None else torch.zeros_like(p, memory_format=torch.preserve_format)
            out.append(st[key])
        return out

    def _steps(self, params: list[Tensor], group: dict) -> list[Tensor]:
        """Per-parameter step counters (0-d float tensors where :meth:`_step_home` puts them, as torch.optim
        keeps them), incremented."""
        def new(p):
            device, dtype = self._step_home(group, p)
            return torch.zeros((), dtype=dtype, device=device)
        steps = self._state_list(params, "step", new)
        torch._foreach_add_(steps, 1.0)
        return steps

    def _path(self, group: dict) -> str:
        """``"per_tensor"``, ``"foreach"``, ``"fused"`` (forced) or ``"auto"`` (fused where it is correct)."""
        if group.get("differentiable") or group.get("foreach") is False:
            return "per_tensor"
        if group.get("fused"):
            return "fused"
        if group.get("foreach") or group.get("fused") is False or not self.has_fused:
            return "foreach"
        # a tensor lr: torch's default (per-tensor) path rounds lr / bias correction in the tensor's dtype;
        # the kernels would compute it in double
        return "foreach" if isinstance(group.get("lr"), Tensor) else "auto"

    def _fused_split(self, params: list[Tensor], per_param: list[list[Tensor]], forced: bool):
        """Indices of the parameters the fused kernel may take, bucketed by (device, dtype), and the rest.
        ``per_param[i]``: every tensor the kernel would touch for parameter ``i``. ``forced`` (``fused=True``)
        raises torch's error for non-floating or unsupported-device parameters."""
        devices = _get_fused_kernels_supported_devices()
        if not forced and self.fused_devices is not None:
            devices = [d for d in devices if d in self.fused_devices]
        buckets: dict[tuple, list[int]] = {}
        rest = []
        for i, p in enumerate(params):
            if not (p.device.type in devices and torch.is_floating_point(p)):
                if forced:
                    raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                       f"supported devices: {devices} but {p.dtype} and {p.device.type}")
                rest.append(i)
            elif dense_alike(per_param[i]):
                buckets.setdefault((p.device, p.dtype), []).append(i)
            else:
                rest.append(i)
        return list(buckets.values()), rest


def _pick(xs, idx):
    return [xs[i] for i in idx]


class _TorchTwin(Optimizer):
    """``step`` of the optimizers with a torch twin: each group's parameters with gradients -> ``_update``.

    Each twin also subclasses its ``torch.optim`` namesake (``isinstance(SGD(...), torch.optim.SGD)``, as
    users' code and tools check), after this class in the method order: our ``__init__``, ``step``,
    ``__setstate__`` and ``state_dict`` handling are used; torch's ``__init__`` and ``_init_group`` are not run."""

    def step(self, closure=None):
        """One update of every parameter with a gradient; ``closure`` (optional) re-evaluates and returns the loss.

        Under ``torch.compile`` the default path is traced as multi-tensor operations (no fused kernel, no host
        read: step counts and bias corrections stay tensors), ``foreach=False`` as per-tensor operations; a
        ``fused=True`` group runs eagerly (a graph break), as torch.optim's fused step does."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if _compiling() and any(g.get("fused") for g in self.param_groups):
            _eagerly(self._update_groups)
        else:
            self._update_groups()
        return loss

    def _update_groups(self) -> None:
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            for group in self.param_groups:
                params, grads = self._group_tensors(group)
                if params:
                    self._update(group, params, grads)

    def _ops_and_rest(self, group, params, grads, per_param, run_fused):
        """Run ``run_fused(indices)`` on each fused bucket; return the ops and the tensors left for them.
        While compiling the default path is the multi-tensor one (the kernels cannot be traced)."""
        path = self._path(group)
        if path == "auto" and _compiling():
            path = "foreach"
        if path in ("fused", "auto"):
            buckets, rest = self._fused_split(params, per_param, path == "fused")
            for idx in buckets:
                run_fused(idx)
            return _FOREACH, rest
        return (_PER_TENSOR if path == "per_tensor" else _FOREACH), list(range(len(params)))

    @staticmethod
    def _signed(ops, grads, group) -> tuple[list[Tensor], bool]:
        """``-g`` under ``maximize``; the flag says whether the list is a fresh copy (safe to update in place)."""
        return (ops.neg(grads), True) if group["maximize"] else (grads, False)


class SGD(_TorchTwin, torch.optim.SGD):
    """SGD with momentum and Nesterov momentum (see the module docstring); arguments as ``torch.optim.SGD``.

    Args: ``lr`` (float or 1-element tensor, >= 0), ``momentum`` (>= 0), ``dampening``, ``weight_decay``
    (L2, >= 0), ``nesterov`` (needs momentum > 0 and dampening 0), keyword-only ``maximize``, ``foreach``,
    ``differentiable``, ``fused`` (see the module docstring). Raises ``ValueError`` for out-of-range values,
    ``RuntimeError`` for ``fused`` with ``foreach=True`` or ``differentiable``.
    """

    has_fused = True

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float | Tensor = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None) -> None:
        _nonneg("momentum value", momentum)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

    def _path(self, group: dict) -> str:
        path = super()._path(group)
        return "foreach" if path == "auto" and not self._big else path

    def _update(self, group, params, grads) -> None:
        lr, mu, damp = _num(group["lr"]), group["momentum"], group["dampening"]
        wd = _num(group["weight_decay"])
        # ATen's fused SGD kernel wins on large tensors (2x at 10M parameters) but loses to the multi-tensor
        # path on many small ones: by default it is used when tensors average >= 64k elements
        self._big = sum(p.numel() for p in params) >= 65536 * len(params) or params[0].is_cuda
        bufs = [self.state[p].get("momentum_buffer") if mu else None for p in params]

        def fused(idx):
            for first in (False, True):
                sub = [i for i in idx if (bufs[i] is None) == first] if mu else ([] if first else idx)
                if not sub:
                    continue
                if first:
                    for i in sub:
                        bufs[i] = self.state[params[i]]["momentum_buffer"] = torch.empty_like(grads[i])
                torch._fused_sgd_(_pick(params, sub), _pick(grads, sub), _pick(bufs, sub) if mu else [],
                                  weight_decay=float(wd), momentum=mu, lr=lr, dampening=damp, nesterov=group["nesterov"],
                                  maximize=group["maximize"], is_first_step=first)

        per_param = [[p, g] + ([b] if b is not None else []) for p, g, b in zip(params, grads, bufs)]
        ops, rest = self._ops_and_rest(group, params, grads, per_param, fused)
        if not rest:
            return
        params, grads, bufs = _pick(params, rest), _pick(grads, rest), _pick(bufs, rest)
        grads, own = self._signed(ops, grads, group)
        if wd:
            grads, own = (ops.add_(grads, params, alpha=wd) if own else ops.add(grads, params, alpha=wd)), True
        if mu:
            old = [i for i, b in enumerate(bufs) if b is not None]
            if old:
                ob = _pick(bufs, old)
                ops.mul_(ob, mu)
                ops.add_(ob, _pick(grads, old), alpha=1 - damp)
            for i, b in enumerate(bufs):
                if b is None:                      # this parameter's first step: b = g
                    bufs[i] = self.state[params[i]]["momentum_buffer"] = grads[i].detach().clone()
            if group["nesterov"]:
                grads = ops.add_(grads, bufs, alpha=mu) if own else ops.add(grads, bufs, alpha=mu)
            else:
                grads = bufs
        ops.add_(params, grads, alpha=-lr)


class Adagrad(_TorchTwin, torch.optim.Adagrad):
    """Adagrad (Duchi et al. 2011); see the module docstring. Arguments as ``torch.optim.Adagrad``; state
    (``step``, ``sum``) is created for every parameter at construction, as torch does."""

    has_fused = True

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None) -> None:
        _check_lr(lr)
        _nonneg("lr_decay value", lr_decay)
        _nonneg("weight_decay value", weight_decay)
        _nonneg("initial_accumulator_value value", initial_accumulator_value)
        _nonneg("epsilon value", eps)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, fused=fused))
        for group in self.param_groups:
            self._init_state(group, group["params"])

    def _init_state(self, group, params) -> None:
        for p in params:
            st = self.state[p]
            if "step" not in st:
                device, dtype = self._step_home(group, p)
                st["step"] = torch.zeros((), dtype=dtype, device=device)
            if "sum" not in st:
                st["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)

    def _update(self, group, params, grads) -> None:
        self._init_state(group, params)                      # groups added later
        sums, steps = [self.state[p]["sum"] for p in params], [self.state[p]["step"] for p in params]
        torch._foreach_add_(steps, 1.0)
        lr_t, wd, eps, decay = group["lr"], group["weight_decay"], group["eps"], group["lr_decay"]
        lr = _num(lr_t)

        def fused(idx):
            torch._fused_adagrad_(_pick(params, idx), _pick(grads, idx), _pick(sums, idx), _pick(steps, idx), lr=lr,
                                  lr_decay=decay, weight_decay=wd, eps=eps, maximize=group["maximize"])

        ops, rest = self._ops_and_rest(group, params, grads, [[p, g, s] for p, g, s in zip(params, grads, sums)],
                                       fused)
        if not rest:
            return
        params, grads, sums, steps = (_pick(x, rest) for x in (params, grads, sums, steps))
        grads, own = self._signed(ops, grads, group)
        if wd:
            grads = ops.add_(grads, params, alpha=wd) if own else ops.add(grads, params, alpha=wd)
        ops.addcmul_(sums, grads, grads, value=1.0)
        std = ops.tmp_add(ops.sqrt(sums), eps)
        ops.addcdiv_(params, grads, std, [-_lr_over(lr_t, 1 + (t - 1) * decay) for t in _step_values(steps)])


class RMSprop(_TorchTwin, torch.optim.RMSprop):
    """RMSprop (Hinton, lecture 6e), optionally centred and with momentum; see the module docstring.
    Arguments as ``torch.optim.RMSprop`` (which has no ``fused``): by default the plain form (no momentum,
    not centred, ``alpha < 1``) of CPU parameters runs as one fused Adam kernel pass, see ``_update``; every
    other case on the multi-tensor path (any ``alpha >= 0``, as torch)."""

    has_fused = True
    fused_devices = ("cpu",)        # the Adam-kernel trick reads step counts on the host: CPU counters only

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False) -> None:
        _check_lr(lr)
        _nonneg("epsilon value", eps)
        _nonneg("momentum value", momentum)
        _nonneg("weight_decay value", weight_decay)
        _nonneg("alpha value", alpha)
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                                      weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable))

    def _path(self, group: dict) -> str:
        path = super()._path(group)
        # the fused-Adam form needs 0 <= alpha < 1 (its bias correction 1 - alpha^t is then in (0, 1])
        plain = not (group["momentum"] or group["centered"]) and group["alpha"] < 1
        return "foreach" if path == "auto" and not plain else path

    def _update(self, group, params, grads) -> None:
        steps = self._steps(params, group)
        a, eps, lr, wd, mu = group["alpha"], group["eps"], _num(group["lr"]), group["weight_decay"], group["momentum"]
        sq = self._state_list(params, "square_avg")

        def fused(idx):
            scratch = self.__dict__.setdefault("_scratch", {})
            # Plain RMSprop is Adam with beta1 = 0 and beta2 = alpha once Adam's bias correction is undone:
            # sqrt(v / c) + eps = (sqrt(v) + eps sqrt(c)) / sqrt(c), c = 1 - alpha^t, so Adam with lr / sqrt(c)
            # and eps / sqrt(c) takes exactly the step lr g / (sqrt(v) + eps): one fused pass instead of five.
            # Adam's first moment (= g when beta1 = 0) goes to a scratch buffer kept outside the state.
            by_t: dict[float, list[int]] = {}
            for i in idx:
                by_t.setdefault(float(steps[i]), []).append(i)
            for t, sub in by_t.items():
                c = (1 - a ** t) ** 0.5
                m = []
                for i in sub:
                    buf = scratch.get(params[i])
                    if buf is None or buf.stride() != params[i].stride():
                        # zeros, not empty: the kernel forms 0 * m + g, and 0 * NaN-garbage is NaN
                        buf = scratch[params[i]] = torch.zeros_like(params[i])
                    m.append(buf)
                torch._fused_adam_(_pick(params, sub), _pick(grads, sub), m, _pick(sq, sub), [], _pick(steps, sub),
                                   lr=lr / c, beta1=0.0, beta2=a, weight_decay=wd, eps=eps / c, amsgrad=False,
                                   maximize=group["maximize"])

        ops, rest = self._ops_and_rest(group, params, grads, [[p, g, s] for p, g, s in zip(params, grads, sq)], fused)
        if not rest:
            return
        params, grads, sq = (_pick(x, rest) for x in (params, grads, sq))
        grads, own = self._signed(ops, grads, group)
        if wd:
            grads = ops.add_(grads, params, alpha=wd) if own else ops.add(grads, params, alpha=wd)
        ops.mul_(sq, a)
        ops.addcmul_(sq, grads, grads, value=1 - a)
        if group["centered"]:
            gavg = self._state_list(params, "grad_avg")
            ops.lerp_(gavg, grads, 1 - a)
            denom = ops.tmp_sqrt(ops.addcmul(sq, gavg, gavg, value=-1))
        else:
            denom = ops.sqrt(sq)
        denom = ops.tmp_add(denom, eps)
        if mu:
            bufs = self._state_list(params, "momentum_buffer")
            ops.mul_(bufs, mu)
            ops.addcdiv_(bufs, grads, denom)
            ops.add_(params, bufs, alpha=-lr)
        else:
            ops.addcdiv_(params, grads, denom, value=-lr)


class Adam(_TorchTwin, torch.optim.Adam):
    """Adam (1412.6980) with L2 weight decay; ``decoupled_weight_decay=True`` is AdamW (1711.05101).
    Arguments, checks and state (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) as ``torch.optim.Adam``;
    ``betas`` may be floats or 1-element tensors (read once per step)."""

    has_fused = True

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False) -> None:
        if isinstance(lr, Tensor) and foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        _check_lr(lr)
        _nonneg("epsilon value", eps)
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas}")
        betas = _check_torch_betas(tuple(float(b) if isinstance(b, int) else b for b in betas), foreach, capturable)
        _nonneg("weight_decay value", weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _update(self, group, params, grads) -> None:
        b1, b2 = (_num(b) for b in group["betas"])
        lr_t, eps, wd, ams = group["lr"], group["eps"], group["weight_decay"], group["amsgrad"]
        lr = _num(lr_t)
        m, v = self._state_list(params, "exp_avg"), self._state_list(params, "exp_avg_sq")
        vmax = self._state_list(params, "max_exp_avg_sq") if ams else []
        steps = self._steps(params, group)
        decoupled = group["decoupled_weight_decay"]

        def fused(idx):
            kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
            kernel(_pick(params, idx), _pick(grads, idx), _pick(m, idx), _pick(v, idx), _pick(vmax, idx) if ams else [],
                   _pick(steps, idx), lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps, amsgrad=ams,
                   maximize=group["maximize"])

        per_param = [[p, g, a, b] + ([vmax[i]] if ams else []) for i, (p, g, a, b) in enumerate(zip(params, grads, m, v))]
        ops, rest = self._ops_and_rest(group, params, grads, per_param, fused)
        if not rest:
            return
        params, grads, m, v, steps = (_pick(x, rest) for x in (params, grads, m, v, steps))
        vmax = _pick(vmax, rest) if ams else []
        grads, own = self._signed(ops, grads, group)
        if wd and decoupled:
            ops.mul_(params, _num(1 - lr_t * wd))           # in lr's dtype when it is a tensor, as torch
        elif wd:
            grads = ops.add_(grads, params, alpha=wd) if own else ops.add(grads, params, alpha=wd)
        adam_moments_(m, v, grads, b1, b2, ops)
        if ams:
            ops.maximum_(vmax, v)
        t = _step_values(steps)                             # numbers, or tensors (compiling, device counters)
        denom = ops.tmp_div(ops.sqrt(vmax if ams else v), [(1 - b2 ** ti) ** 0.5 for ti in t])
        denom = ops.tmp_add(denom, eps)
        ops.addcdiv_(params, m, denom, [-_lr_over(lr_t, 1 - b1 ** ti) for ti in t])


class AdamW(Adam, torch.optim.AdamW):
    """Adam with decoupled weight decay (1711.05101): ``theta <- theta (1 - lr wd)``, then the Adam step.
    Arguments as ``torch.optim.AdamW`` (``weight_decay`` default 1e-2)."""

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def _fix_group(self, group: dict) -> None:
        group["decoupled_weight_decay"] = True
