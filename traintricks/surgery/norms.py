"""Normalization surgery on any model: :func:`convert_norms`, :func:`sync_batchnorm`, :func:`to_inplace_abn`.

Each replaces norm modules **in place** -- the new module at the same attribute path, so the model's forward calls
it as before and ``state_dict`` keys keep their names -- and returns a :class:`~traintricks.surgery.SurgeryReport`.

- :func:`convert_norms`: torch's or our batch / group / instance / layer norms to any registered norm
  (:data:`traintricks.nn.normalization.NORMS`: ``batchnorm``, ``groupnorm``, ``layernorm``, ``instancenorm``,
  ``batchrenorm``, ``none``, ...) with the affine parameters kept and running statistics copied where both keep
  them. Batch norm (Ioffe & Szegedy 2015, 1502.03167), group norm (Wu & He 2018, 1803.08494), batch renorm
  (Ioffe 2017, 1702.03275).
- :func:`sync_batchnorm`: torch's batch norms to ``torch.nn.SyncBatchNorm`` (as its ``convert_sync_batchnorm``),
  ours switched to synchronized statistics (:func:`traintricks.nn.sync_batchnorm.sync_batchnorm_`).
- :func:`to_inplace_abn`: batch norm + leaky ReLU pairs found in the model's ``torch.fx`` graph to In-Place
  Activated BatchNorm (Rota Bulò et al. 2018, 1712.02616), which saves only its output for backward.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..memory.recomputation import ForwardState
from ..nn.batchnorm import share_batchnorm_state
from ..nn.normalization import NORMS, fuses_norm_activation, make_norm
from .probe import probe
from .report import SurgeryReport
from .select import Selector, describe, select

# -------------------------------------------------------------------------------------------------- helpers

#: modules whose classes' ``forward`` computes exactly their norm (and, for the fused ones, their activation)
_KNOWN_FORWARD_MODULES = frozenset({
    "torch.nn.modules.batchnorm", "torch.nn.modules.instancenorm", "torch.nn.modules.normalization",
    "traintricks.nn.batchnorm", "traintricks.nn.batchrenorm", "traintricks.nn.groupnorm", "traintricks.nn.fused",
    "traintricks.memory.inplace_abn"})


def _check_module(fn: str, model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn} takes an nn.Module, got {type(model).__name__}")


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(module) -> every (parent, attribute name) that holds it (a module shared at two paths is in both)."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is not None:
                out.setdefault(id(child), []).append((parent, name))
    return out


def _replace(holders: dict, old: nn.Module, new: nn.Module) -> None:
    for parent, name in holders.get(id(old), []):
        parent._modules[name] = new


def _placement(m: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of ``m``'s parameters and buffers (``None`` when it has none)."""
    tensors = [t for t in list(m._parameters.values()) + list(m._buffers.values()) if t is not None]
    device = tensors[0].device if tensors else None
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), None)
    return device, dtype


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "parametrizations", None) is not None)


def _fused_activation(m: nn.Module) -> tuple[str, float] | None:
    """``(activation, slope)`` of one of our norms that applies an activation itself, else ``None``."""
    from ..memory.inplace_abn import InPlaceABN, InPlaceABN1d
    from ..nn.fused import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
    if isinstance(m, (InPlaceABN, InPlaceABN1d)):
        return "leaky_relu", m.slope
    if isinstance(m, (BatchNormAct1d, BatchNormAct2d, BatchNormAct3d)):
        return m.activation, m.negative_slope
    return None


def _batch_norm_dims(m: nn.Module) -> int | None:
    """Spatial dims of a batch norm of torch's or ours by its class (``None``: any, e.g. ``SyncBatchNorm``)."""
    from ..memory.inplace_abn import InPlaceABN, InPlaceABN1d
    from ..nn.batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
    from ..nn.fused import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
    by_dims = {1: (nn.BatchNorm1d, BatchRenorm1d, BatchNormAct1d, InPlaceABN1d),
               2: (nn.BatchNorm2d, BatchRenorm2d, BatchNormAct2d, InPlaceABN),
               3: (nn.BatchNorm3d, BatchRenorm3d, BatchNormAct3d)}
    return next((d for d, classes in by_dims.items() if isinstance(m, classes)), None)


def _norm_kind(m: nn.Module) -> tuple[str, int, int | None] | None:
    """``(kind, channels, spatial dims or None)`` of a norm module, ``kind`` one of ``"batch"`` (batch norm and its
    variants: running statistics over (N, *)), ``"instance"``, ``"group"`` (over dim 1: group, layer-as-group),
    ``"last"`` (``nn.LayerNorm`` / ``nn.RMSNorm`` over the trailing dims); ``None`` for other modules."""
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        dims = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}
        return "instance", m.num_features, next((d for c, d in dims.items() if isinstance(m, c)), None)
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return "batch", m.num_features, _batch_norm_dims(m)
    if isinstance(m, nn.GroupNorm):
        return "group", m.num_channels, None
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        shape = tuple(m.normalized_shape)
        return "last", shape[-1], None
    return None


def _input_ndims(model: nn.Module, modules: list[nn.Module], example_inputs) -> dict[int, int]:
    """The rank of each of ``modules``' inputs on a run of ``example_inputs`` (no_grad; state rolled back)."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    seen: dict[int, int] = {}

    def pre(mod, args):
        if args and isinstance(args[0], torch.Tensor):
            seen.setdefault(id(mod), args[0].dim())
    probe(model, inputs, [m.register_forward_pre_hook(pre) for m in modules])
    return seen


# -------------------------------------------------------------------------------------------------- convert_norms

_OPTIONS = ("groups", "activation", "eps", "momentum")


def convert_norms(model: nn.Module, to: str, *, where: Selector | None = None, example_inputs=None,
                  **options) -> SurgeryReport:
    """Replace every normalization layer of ``model`` (or those ``where`` selects) by the registered norm ``to``,
    in place.

    Sources: torch's and our ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, batch renorm, ``BatchNormAct*``,
    ``InPlaceABN``, ``GroupNorm`` / ``GroupLayerNorm``, ``InstanceNorm1d/2d/3d``, and ``nn.LayerNorm`` /
    ``nn.RMSNorm``. Each is replaced at the same attribute path by ``make_norm(to, C, dim, groups)`` for its
    channel count ``C`` and spatial dims (from its class -- ``BatchNorm2d``: 2 --, else from ``example_inputs``,
    else 2, noted), moved to its device and floating dtype, in its training mode. Kept: the affine ``weight`` /
    ``bias`` (the same ``Parameter`` objects, so an optimizer built before keeps them), ``eps`` and ``momentum``
    where the new norm has them (unless given in ``options``); the running statistics (``running_mean``,
    ``running_var``, ``num_batches_tracked``) where both keep them (batch norm <-> ours <-> batch renorm); from a
    batch norm to a batch norm also ``affine=False``, ``bias=False``, ``track_running_stats=False`` and the
    running-average rule (``cumulative_warmup`` of the old layer, off for torch's), so that torch's layer and its
    conversion to ``"batchnorm"`` give the same outputs, gradients and buffers (tested on PyTorch's samples). A group
    norm converted to ``groupnorm`` keeps its group count unless ``groups=`` is given. In eval mode torch's
    ``BatchNorm2d`` -> ``"batchnorm"`` or ``"batchrenorm"`` and ``GroupNorm(32, C)`` -> ``"groupnorm"`` give the
    same outputs (tested).

    Not converted (listed in ``report.skipped`` with the reason): a transformer's ``nn.LayerNorm(dim)`` over the
    last dim -- not a channel norm -- to anything but ``"layernorm"`` (our :class:`~traintricks.nn.LayerNorm`
    with the same shape) or ``"none"``, unless ``example_inputs`` shows it normalizes (N, C) inputs; a norm that
    applies an activation (``BatchNormAct2d``, ``InPlaceABN``) to a norm that does not, and the reverse (that would
    drop or add an activation); a norm with its own ``forward`` we do not know (e.g. timm's ``BatchNormAct2d``);
    one with forward hooks; one already of the target class; the model itself (nothing holds it).

    Args:
        model: any ``nn.Module``.
        to: a registered norm name (``traintricks list`` shows them).
        where: a selector (:func:`~traintricks.surgery.select`): only selected norms are converted.
        example_inputs: optional input (or tuple) run once (no_grad, state rolled back) to learn each norm's
            input rank.
        **options: ``groups`` (group norm), ``activation`` (fused norms), ``eps``, ``momentum``.

    Raises ``TypeError`` for a non-module or an unknown option, ``ValueError`` for an unknown norm name,
    :class:`NothingToChangeError` when no norm was converted (with each skipped one's reason).
    """
    _check_module("convert_norms", model)
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"convert_norms: unknown option(s) {', '.join(unknown)}; it takes {', '.join(_OPTIONS)}")
    if to not in NORMS:
        raise ValueError(f"convert_norms: unknown normalization {to!r}; choose one of: {', '.join(NORMS.names())}")
    report = SurgeryReport("convert_norms")
    picked = select(model, where) if where is not None else list(model.named_modules())
    norms = [(name, m) for name, m in picked if _norm_kind(m) is not None]
    ndims = _input_ndims(model, [m for _, m in norms], example_inputs) if example_inputs is not None else {}
    holders = _holders(model)
    assumed = []
    for name, m in norms:
        result = _convert_one(m, to, options, ndims.get(id(m)))
        if isinstance(result, str):
            report.skipped.append((name, result))
            continue
        new, what, assumed_dim = result
        if not name:
            report.skipped.append((name, "the model itself is a norm: nothing holds it to replace it in place"))
            continue
        _replace(holders, m, new)
        report.changed.append((name, what))
        if assumed_dim:
            assumed.append(name)
    if assumed:
        report.notes.append(f"{', '.join(assumed)}: input rank unknown (its class accepts several), built for "
                            f"(N, C, H, W) inputs; pass example_inputs= to check")
    looked_for = "normalization layers" if where is None else f"normalization layers among {describe(where)}"
    return report.require_changes(looked_for)


def _convert_one(m: nn.Module, to: str, options: dict, in_ndim: int | None):
    """``(new module, what was done, whether the dims were assumed)`` or the reason ``m`` is left."""
    kind, channels, dim = _norm_kind(m)
    if type(m).forward.__module__ not in _KNOWN_FORWARD_MODULES:
        return (f"{type(m).__name__} has its own forward ({type(m).forward.__module__}), which may compute more "
                f"than its norm (an activation, a drop path): converting it would lose that")
    if _has_hooks(m):
        return f"{type(m).__name__} has forward hooks or parametrizations, which the new module would not have"
    act = _fused_activation(m)
    if in_ndim is not None:
        dim = in_ndim - 2
    assumed = False
    if kind == "last":
        if in_ndim == 2 and len(m.normalized_shape) == 1:
            kind, dim = "group", 0                      # LayerNorm(C) on (N, C): a channel norm
        elif to == "none":
            return nn.Identity(), f"{type(m).__name__} -> Identity (affine parameters dropped)", False
        elif to == "layernorm":
            return _last_dim_layernorm(m)
        else:
            return (f"{type(m).__name__}{tuple(m.normalized_shape)} normalizes the last dimension (a transformer's "
                    f"features), not channel dim 1: {to!r} would normalize another axis; only 'layernorm' and "
                    f"'none' convert it (or pass example_inputs= if its input is (N, C))")
    if dim is None:
        dim = 2
        try:        # the rank matters only where the target's class depends on it (batch norms, instance norm)
            assumed = type(make_norm(to, channels, dim=1, groups=8, activation=act[0] if act else None)) \
                is not type(make_norm(to, channels, dim=2, groups=8, activation=act[0] if act else None))
        except (ValueError, TypeError):
            assumed = True
    target_fuses = fuses_norm_activation(to)
    if act is not None and not target_fuses and to != "none":
        return (f"{type(m).__name__} applies {act[0]} after the norm and {to!r} does not: the activation would be "
                f"lost (convert to batchnorm_act or inplace_abn)")
    if act is None and target_fuses:
        return (f"{to!r} applies an activation after the norm, which {type(m).__name__} does not: converting would "
                f"add one (for batch norm + leaky ReLU pairs use to_inplace_abn)")
    groups = options.get("groups", getattr(m, "num_groups", 1) if kind == "group" else 8)   # LayerNorm: 1 group
    activation = options.get("activation", act[0] if act else None)
    try:
        new = make_norm(to, channels, dim=dim, groups=groups, activation=activation)
    except (ValueError, TypeError) as e:
        return f"cannot build {to!r} for it: {e}"
    if act is not None and target_fuses:
        if hasattr(new, "negative_slope"):
            new.negative_slope = float(act[1])
        elif hasattr(new, "slope"):
            new.slope = float(act[1])
    if type(new) is type(m) and getattr(new, "num_groups", None) == getattr(m, "num_groups", None) \
            and not (set(options) & {"eps", "momentum"}):
        return f"already a {type(m).__name__}"
    device, dtype = _placement(m)
    new.to(device=device, dtype=dtype)
    new.train(m.training)
    what = [f"{type(m).__name__}({channels}) -> {type(new).__name__}"]
    if hasattr(new, "num_groups") and new.num_groups not in (1, channels):
        what[0] += f" ({new.num_groups} groups)"
    lost = _copy_state(m, new, options)
    what += lost
    return new, "; ".join(what), assumed


def _last_dim_layernorm(m: nn.Module):
    from ..nn.groupnorm import LayerNorm
    affine = getattr(m, "weight", None) is not None
    has_bias = getattr(m, "bias", None) is not None
    if type(m) is LayerNorm:
        return f"already a {type(m).__name__}"
    eps = m.eps if m.eps is not None else torch.finfo(_placement(m)[1] or torch.float32).eps
    device, dtype = _placement(m)
    new = LayerNorm(m.normalized_shape, eps=eps, elementwise_affine=affine, bias=has_bias, device=device,
                    dtype=dtype)
    new.train(m.training)
    what = [f"{type(m).__name__}{tuple(m.normalized_shape)} -> LayerNorm (ours)"]
    if isinstance(m, nn.RMSNorm):
        what.append("now also centred (layer norm, not RMS norm)")
    what += _copy_state(m, new, {})
    return new, "; ".join(what), False


@torch.no_grad()
def _copy_state(old: nn.Module, new: nn.Module, options: dict) -> list[str]:
    """Move ``old``'s affine parameters (the objects) and running statistics (values) into ``new``; set ``eps`` /
    ``momentum`` from ``options`` or ``old``. Returns remarks on what could not be kept."""
    remarks = []
    if isinstance(old, nn.modules.batchnorm._NormBase) and isinstance(new, nn.modules.batchnorm._NormBase):
        # batch norm to batch norm: keep what the old layer computes (no affine map, batch statistics in eval)
        if not old.affine and new.affine:
            new.affine = False
            new.register_parameter("weight", None)
            new.register_parameter("bias", None)
        elif old.affine and getattr(old, "bias", None) is None and new._parameters.get("bias") is not None:
            new.register_parameter("bias", None)                         # torch's / our bias=False
        if hasattr(new, "cumulative_warmup"):                             # the old layer's running-average rate
            new.cumulative_warmup = bool(getattr(old, "cumulative_warmup", False))
        if not old.track_running_stats and new.track_running_stats:
            new.track_running_stats = False
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                new.register_buffer(name, None)
    for name in ("weight", "bias"):
        p, q = getattr(old, name, None), new._parameters.get(name, None) if name in new._parameters else None
        if p is None:
            continue
        if q is not None and q.shape == p.shape:
            setattr(new, name, p)
        elif isinstance(new, nn.Identity):
            if "affine parameters dropped" not in remarks:
                remarks.append("affine parameters dropped")
        else:
            remarks.append(f"its {name} {tuple(p.shape)} was not kept (the new norm has "
                           f"{'none' if q is None else tuple(q.shape)})")
    stats = ("running_mean", "running_var", "num_batches_tracked")
    if all(getattr(old, s, None) is not None for s in stats[:2]):
        if all(new._buffers.get(s) is not None for s in stats[:2]):
            for s in stats:
                a, b = getattr(old, s, None), new._buffers.get(s)
                if a is not None and b is not None and a.shape == b.shape:
                    b.copy_(a)
            remarks.append("running statistics copied")
        elif not isinstance(new, nn.Identity):
            remarks.append("running statistics dropped (the new norm keeps none)")
    elif new._buffers.get("running_mean") is not None:
        remarks.append("running statistics start at mean 0, variance 1: train (or re-estimate them) before eval")
    for attr in ("eps", "momentum"):
        if attr in options:
            if not hasattr(new, attr):
                remarks.append(f"{attr} ignored (not an option of {type(new).__name__})")
            else:
                setattr(new, attr, options[attr])
        elif attr == "eps" and hasattr(new, "eps") and getattr(old, "eps", None) is not None:
            new.eps = old.eps
        elif attr == "momentum" and isinstance(old, nn.modules.batchnorm._NormBase) \
                and isinstance(new, nn.modules.batchnorm._NormBase):
            new.momentum = old.momentum
    return remarks


# -------------------------------------------------------------------------------------------------- sync_batchnorm

def sync_batchnorm(model: nn.Module, *, torch_layers: bool = False, process_group=None) -> SurgeryReport:
    """Synchronize the batch statistics of every batch norm of ``model`` across data-parallel processes, in place.

    Synchronized batch norm all-reduces each channel's sums and counts so every process normalizes with the
    statistics of the global batch (:mod:`traintricks.nn.sync_batchnorm`). Our ``BatchNorm*`` / ``BatchNormAct*``
    stay what they are with ``sync = True`` (:func:`traintricks.nn.sync_batchnorm.sync_batchnorm_`). PyTorch's
    ``nn.BatchNorm1d/2d/3d`` become, at the same path, our ``BatchNorm1d/2d/3d`` (drop-in: a subclass of torch's,
    same arguments, outputs and ``state_dict``) with ``sync = True`` -- because ``torch.nn.SyncBatchNorm`` refuses
    CPU tensors in distributed training ("expected input tensor to be on GPU"), ours all-reduce over any backend
    (gloo on CPU, NCCL on GPU); ``torch_layers=True`` gives ``torch.nn.SyncBatchNorm`` instead, exactly as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)``. Either way the new layer shares the
    old one's ``weight``/``bias`` objects and running statistics (``num_batches_tracked`` included), eps,
    momentum, training mode and ``qconfig``: ``state_dict`` keys and values are unchanged. Without an initialized
    process group (or with one process) every layer computes plain batch norm.

    Args:
        model: any ``nn.Module``.
        torch_layers: torch's layers become ``torch.nn.SyncBatchNorm`` (GPU only in distributed training).
        process_group: with ``torch_layers=True``, the group to synchronize over (``None``: the default group);
            ours synchronize over the default group only (``ValueError`` otherwise).

    Raises ``TypeError`` for a non-module; ``ValueError`` naming every layer that cannot synchronize (our batch
    renorm and In-Place ABN) before changing any -- leaving them silently unsynchronized would give each process
    different statistics -- and for a ``process_group`` that ours cannot use; :class:`NothingToChangeError` when no
    batch norm was switched (already synchronized ones are listed as skipped).
    """
    _check_module("sync_batchnorm", model)
    from ..nn.sync_batchnorm import can_synchronize
    from ..nn.sync_batchnorm import is_traintricks_batchnorm as _is_ours
    report = SurgeryReport("sync_batchnorm")
    found = list(model.named_modules())
    refused = [f"{n or '<model>'} ({type(m).__name__})" for n, m in found if _is_ours(m) and not can_synchronize(m)]
    if refused:
        raise ValueError("sync_batchnorm: these layers cannot synchronize their statistics across processes: "
                         + ", ".join(refused) + "; convert them first (convert_norms(model, 'batchnorm'))")
    plain_torch = [m for _, m in found if type(m) in _TORCH_BN]
    if process_group is not None and (any(_is_ours(m) for _, m in found) or (plain_torch and not torch_layers)):
        raise ValueError("sync_batchnorm: traintricks' batch norms synchronize over the default process group only; "
                         "process_group= needs torch_layers=True and no traintricks batch norm in the model")
    holders = _holders(model)
    for name, m in found:
        if _is_ours(m):
            if m.sync:
                report.skipped.append((name, "already synchronized"))
            else:
                m.sync = True
                report.changed.append((name, f"{type(m).__name__}: sync = True"))
        elif isinstance(m, nn.SyncBatchNorm):
            report.skipped.append((name, "already a SyncBatchNorm"))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if type(m) not in _TORCH_BN:
                report.skipped.append((name, f"{type(m).__name__} is not torch's BatchNorm1d/2d/3d (its own forward "
                                             f"or a lazy layer): a synchronized layer would compute something else"))
            elif not name:
                report.skipped.append((name, "the model itself is a batch norm: nothing holds it to replace it"))
            else:
                new = _torch_sync(m, process_group) if torch_layers else _ours_sync(m)
                _replace(holders, m, new)
                report.changed.append((name, f"{type(m).__name__} -> {type(new).__name__}"
                                             + ("" if torch_layers else " (ours), sync = True")))
    return report.require_changes("batch norms")


_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _torch_sync(m: nn.modules.batchnorm._BatchNorm, process_group) -> nn.SyncBatchNorm:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for one layer (sharing its parameters and buffers)."""
    return share_batchnorm_state(m, nn.SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                            process_group, device="meta"))


def _ours_sync(m: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Our batch norm of ``m``'s class, arguments and state (shared), with synchronized statistics."""
    from ..nn import batchnorm as ours
    cls = {nn.BatchNorm1d: ours.BatchNorm1d, nn.BatchNorm2d: ours.BatchNorm2d, nn.BatchNorm3d: ours.BatchNorm3d}
    out = share_batchnorm_state(m, cls[type(m)](m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                                       device="meta", bias=getattr(m, "bias", None) is not None or not m.affine))
    out.sync = True
    return out


# -------------------------------------------------------------------------------------------------- to_inplace_abn

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu6, F.elu, F.gelu, F.silu, torch.sigmoid, torch.tanh}
_LEAKY_FUNCTIONS = {F.leaky_relu, torch._C._nn.leaky_relu, torch._C._nn.leaky_relu_}


def _graphs(model: nn.Module, notes: list[str]) -> list[tuple[str, fx.Graph, dict[str, nn.Module]]]:
    """``(prefix, graph, modules by path in it)`` for ``model`` traced with ``torch.fx`` (torch's and our layers kept
    as leaves); a module that cannot be traced is replaced by its children, each traced as its own root (noted)."""
    from ..nn.fold import LeafTracer
    out = []

    def visit(m: nn.Module, prefix: str) -> None:
        state = ForwardState(m)                              # tracing runs Python code of the forward: undo it
        tracer = LeafTracer()
        try:
            graph = tracer.trace(m)
        except Exception as e:                               # noqa: BLE001 -- any failure: go one level down
            state.rollback()
            kids = [(n, c) for n, c in m.named_children() if any(True for _ in c.children())]
            notes.append(f"could not trace {prefix.rstrip('.') or type(m).__name__} with torch.fx "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         + ("its submodules were analysed one by one" if kids else "nothing under it was analysed"))
            for n, c in kids:
                visit(c, f"{prefix}{n}.")
            return
        state.rollback()
        out.append((prefix, graph, dict(m.named_modules(remove_duplicate=False))))

    visit(model, "")
    return out


def _plain_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m).forward.__module__ in (
        "torch.nn.modules.batchnorm", "traintricks.nn.batchnorm")


def to_inplace_abn(model: nn.Module) -> SurgeryReport:
    """Replace every batch norm whose output feeds only a ``nn.LeakyReLU`` by In-Place Activated BatchNorm, in place.

    In-Place ABN (Rota Bulò, Porzi & Kontschieder 2018, arXiv:1712.02616; :class:`traintricks.memory.InPlaceABN`)
    computes ``leaky_relu(BN(x), slope)`` and saves only its output for backward, inverting the leaky ReLU and the
    affine map there: about half the activation memory of the pair. The pairs are found in the model's
    ``torch.fx`` graph: a batch norm (torch's or our plain ``BatchNorm1d/2d``) called once, whose output is used
    only by a call of a ``nn.LeakyReLU`` module with slope > 0. The norm becomes ``InPlaceABN`` /
    ``InPlaceABN1d`` at its path with the same ``weight``/``bias`` objects and buffers (same ``state_dict`` keys)
    and that slope; the activation module becomes ``nn.Identity`` (a parameterless module: no key changes) --
    only when *every* call of that module follows such a norm. Eval outputs equal the original's exactly.

    Skipped, with the reason: a norm followed by ``ReLU`` (or another activation: InPlace-ABN needs an invertible
    activation), by a functional ``F.leaky_relu`` (a call in the forward cannot be removed in place, and applying
    the leaky ReLU twice would change the output), a norm whose output is used elsewhere too, an activation module
    also applied to other tensors, a synchronized or 3-D batch norm (no such InPlaceABN), one with hooks. A module
    torch.fx cannot trace is analysed through its children (noted).

    Raises ``TypeError`` for a non-module, :class:`NothingToChangeError` when no pair was converted.
    """
    _check_module("to_inplace_abn", model)
    report = SurgeryReport("to_inplace_abn")
    graphs = _graphs(model, report.notes)
    paths = {id(m): n for n, m in model.named_modules()}
    calls: dict[int, int] = {}
    for _, graph, mods in graphs:
        for node in graph.nodes:
            if node.op == "call_module":
                calls[id(mods[node.target])] = calls.get(id(mods[node.target]), 0) + 1
    act_uses: dict[int, list] = {}          # id(act) -> [(bn or None, why-not or None)] per call
    skipped: dict[int, str] = {}
    for prefix, graph, mods in graphs:
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(mods[node.target], nn.modules.batchnorm._BatchNorm):
                continue
            bn = mods[node.target]
            users = list(node.users)
            if len(users) != 1:
                skipped.setdefault(id(bn), f"its output is used {len(users)} times: it must feed only a LeakyReLU")
                continue
            user = users[0]
            if user.op == "call_module":
                act = mods[user.target]
                if isinstance(act, nn.LeakyReLU):
                    continue                                 # handled per activation module below
                if isinstance(act, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU)):
                    skipped.setdefault(id(bn), f"followed by {type(act).__name__} ({prefix + user.target}): "
                                               f"InPlace-ABN needs an invertible activation (a leaky ReLU)")
                else:
                    skipped.setdefault(id(bn), f"followed by {type(act).__name__}, not a LeakyReLU")
            elif user.op in ("call_function", "call_method"):
                tgt = user.target
                if tgt in _LEAKY_FUNCTIONS or tgt in ("leaky_relu", "leaky_relu_"):
                    skipped.setdefault(id(bn), "followed by a functional leaky_relu in the forward, which cannot be "
                                               "removed in place (applying it after InPlaceABN would apply it twice)")
                elif tgt in _RELU_FUNCTIONS or tgt in ("relu", "relu_"):
                    skipped.setdefault(id(bn), f"followed by {getattr(tgt, '__name__', tgt)}: InPlace-ABN needs an "
                                               f"invertible activation (a leaky ReLU)")
                else:
                    skipped.setdefault(id(bn), f"followed by {getattr(tgt, '__name__', tgt)}, not a LeakyReLU")
            else:
                skipped.setdefault(id(bn), "its output is returned, not fed to a LeakyReLU")
    # every call of each LeakyReLU module: its input must be a convertible batch norm's only use
    for prefix, graph, mods in graphs:
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(mods[node.target], nn.LeakyReLU):
                continue
            act = mods[node.target]
            src = node.args[0] if node.args else None
            if isinstance(src, fx.Node) and src.op == "call_module" \
                    and isinstance(mods[src.target], nn.modules.batchnorm._NormBase) and len(src.users) == 1:
                act_uses.setdefault(id(act), []).append((act, mods[src.target]))
            else:
                what = getattr(src, "target", src)
                act_uses.setdefault(id(act), []).append((act, f"{getattr(what, '__name__', what)}"))
    holders = _holders(model)
    for uses in act_uses.values():
        act = uses[0][0]
        bns = [b for _, b in uses if isinstance(b, nn.Module)]
        others = [b for _, b in uses if not isinstance(b, nn.Module)]
        apath = paths.get(id(act), type(act).__name__)
        problems = {}
        for bn in bns:
            why = _abn_problem(bn, act, calls)
            if why is not None:
                problems[id(bn)] = why
        if others:
            for bn in bns:
                problems.setdefault(id(bn), f"its LeakyReLU {apath} is also applied to the output of "
                                            f"{', '.join(others)}: it cannot become Identity")
        if calls.get(id(act), 0) != len(uses):
            for bn in bns:
                problems.setdefault(id(bn), f"its LeakyReLU {apath} is also called where it was not traced")
        if problems:
            for bn in bns:
                skipped.setdefault(id(bn), problems.get(id(bn), f"{apath} also follows a norm that cannot convert"))
            continue
        for bn in bns:
            new = _inplace_abn(bn, act.negative_slope)
            _replace(holders, bn, new)
            report.changed.append((paths.get(id(bn), "?"), f"{type(bn).__name__} + LeakyReLU({act.negative_slope}) "
                                                           f"-> {type(new).__name__}; {apath} -> Identity"))
        _replace(holders, act, nn.Identity())
    report.skipped += [(paths.get(i, "?"), why) for i, why in skipped.items()]
    return report.require_changes("batch norm + LeakyReLU pairs")


def _abn_problem(bn: nn.Module, act: nn.LeakyReLU, calls: dict[int, int]) -> str | None:
    if not _plain_bn(bn):
        return f"{type(bn).__name__} is not a plain batch norm (In-Place ABN replaces batch norm only)"
    if isinstance(bn, nn.SyncBatchNorm) or getattr(bn, "sync", False):
        return "it is synchronized across processes, which In-Place ABN cannot do"
    if isinstance(bn, nn.BatchNorm3d):
        return "it is 3-D: there is no 3-D InPlaceABN"
    if not act.negative_slope > 0:
        return f"the LeakyReLU slope {act.negative_slope} is not > 0: not invertible"
    if calls.get(id(bn), 0) != 1:
        return f"it is called {calls.get(id(bn), 0)} times (shared)"
    if _has_hooks(bn) or _has_hooks(act):
        return "it or its activation has forward hooks"
    return None


def _inplace_abn(bn: nn.Module, slope: float) -> nn.Module:
    from ..memory.inplace_abn import InPlaceABN, InPlaceABN1d
    cls = InPlaceABN1d if isinstance(bn, nn.BatchNorm1d) else InPlaceABN
    device, dtype = _placement(bn)
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device=device, dtype=dtype,
              bias=getattr(bn, "bias", None) is not None or not bn.affine, activation_param=float(slope),
              cumulative_warmup=getattr(bn, "cumulative_warmup", False),
              check_finite=getattr(bn, "check_finite", False))
    if bn.affine:
        new.weight = bn.weight
        if getattr(bn, "bias", None) is not None:
            new.bias = bn.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new._buffers[name] = bn._buffers.get(name)
    new.train(bn.training)
    return new
