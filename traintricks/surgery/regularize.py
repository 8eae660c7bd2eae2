"""Dropout, DropConnect and Gaussian noise placed by selector in any model, in place.

``before``/``after`` choose modules (:mod:`traintricks.surgery.select`: a class, ``"type:Linear"``, a name glob,
``"last:type:Linear"``, a callable); the layer acts on their input (a forward pre-hook) or their output (a forward
hook). The layer is a parameterless child of the hooked module (``head.dropout_before``), looked up by attribute
name from a module-level hook function: no ``state_dict`` key is added or renamed, ``copy.deepcopy`` copies it
with the model, and ``train()``/``eval()`` reach it. DropConnect swaps the class of the selected ``nn.Linear``/
``nn.Conv2d`` modules for :class:`~traintricks.nn.DropConnectLinear`/:class:`~traintricks.nn.DropConnectConv2d`
(subclasses: the same object, parameters, keys and hooks).

Sources: dropout -- Hinton et al. 2012, arXiv:1207.0580 (channel mode: Tompson et al. 2015, arXiv:1411.4280);
DropConnect -- Wan, Zeiler, Zhang, LeCun & Fergus, ICML 2013; Gaussian noise on inputs or activations -- the notes'
forward-pass regularizers.
"""
from __future__ import annotations

from torch import nn

from ..nn import DropConnectConv2d, DropConnectLinear, Dropout, GaussianNoise
from ..nn.dropout import check_probability
from .report import SurgeryReport
from .select import Selector, describe, select


def _check(model, name: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} takes an nn.Module, got {type(model).__name__}")


def _place(name: str, before: Selector | None, after: Selector | None) -> tuple[str, Selector]:
    if (before is None) == (after is None):
        raise ValueError(f"{name}: give exactly one of before= (on the selected modules' input) or after= (on their "
                         f"output), got {'both' if before is not None else 'neither'}")
    return ("before", before) if before is not None else ("after", after)


# module-level hook functions: a deep copy of the model keeps calling its own helper (looked up by name)
def _dropout_before(module, args):
    return (module.dropout_before(args[0]),) + tuple(args[1:]) if args else None


def _dropout_after(module, args, output):
    return module.dropout_after(output)


def _noise_before(module, args):
    return (module.noise_before(args[0]),) + tuple(args[1:]) if args else None


def _noise_after(module, args, output):
    return module.noise_after(output)


_HOOKS = {"dropout_before": _dropout_before, "dropout_after": _dropout_after, "noise_before": _noise_before,
          "noise_after": _noise_after}


def _hook_all(model: nn.Module, report: SurgeryReport, kind: str, side: str, where: Selector, make, what: str,
              looked_for: str) -> SurgeryReport:
    attr = f"{kind}_{side}"
    hook = _HOOKS[attr]
    found = select(model, where)
    for path, module in found:
        if attr in module._modules:
            report.skipped.append((path, f"it already has {kind} on its {'input' if side == 'before' else 'output'}"))
            continue
        if hasattr(module, attr):
            report.skipped.append((path, f"it has an attribute {attr!r} of its own"))
            continue
        module.add_module(attr, make().train(module.training))   # the model's mode: an eval model stays in eval
        if side == "before":
            module.register_forward_pre_hook(hook)
        else:
            module.register_forward_hook(hook)
        report.changed.append((path, f"{what} on its {'input' if side == 'before' else 'output'}"))
    if not found:
        report.notes.append(f"no module matches {describe(where)}")
    return report.require_changes(looked_for)


def add_dropout(model: nn.Module, p: float = 0.5, *, before: Selector | None = None, after: Selector | None = None,
                mode: str = "element") -> SurgeryReport:
    """Dropout (Hinton et al. 2012, arXiv:1207.0580) on the input (``before``) or output (``after``) of the
    selected modules of ``model``, in place: ``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` per element
    (``mode="element"``) or per (sample, channel) of (N, C, ...) tensors (``"channel"``) in training; the
    identity in eval mode. With neither given, ``before="last:type:Linear"``: the classifier head's input.

    Each selected module gets a :class:`~traintricks.nn.Dropout` child ``dropout_before``/``dropout_after`` (no
    ``state_dict`` keys) applied by a forward (pre-)hook; a pre-hook acts on the first positional argument.

    Returns the report; raises ``TypeError`` for a non-Module or a bad selector, ``ValueError`` for ``p`` outside
    ``[0, 1]``, a bad mode or both ``before`` and ``after``, :class:`NothingToChangeError` when nothing is selected
    (or everything selected already has it)."""
    _check(model, "add_dropout")
    if before is None and after is None:
        before = "last:type:Linear"
    side, where = _place("add_dropout", before, after)
    check_probability("add_dropout", p, allow_one=True)
    Dropout(p, mode=mode)                                        # checks mode before anything changes
    report = SurgeryReport("add_dropout")
    return _hook_all(model, report, "dropout", side, where, lambda: Dropout(p, mode=mode),
                     f"dropout p={p:g} ({mode})", describe(where))


def add_noise(model: nn.Module, std: float = 0.1, *, before: Selector | None = None,
              after: Selector | None = None) -> SurgeryReport:
    """Additive Gaussian noise ``y = x + std * eps``, ``eps ~ N(0, 1)`` in training (the identity in eval mode) on
    the input (``before``) or output (``after``) of the selected modules of ``model``, in place. Exactly one of
    ``before``/``after`` (a selector; the root model is ``lambda name, m: name == ""``).

    Each selected module gets a :class:`~traintricks.nn.GaussianNoise` child ``noise_before``/``noise_after``
    (no ``state_dict`` keys) applied by a forward (pre-)hook.

    Returns the report; raises ``TypeError`` for a non-Module or a bad selector, ``ValueError`` for ``std < 0`` or
    not exactly one of ``before``/``after``, :class:`NothingToChangeError` when nothing is selected."""
    _check(model, "add_noise")
    side, where = _place("add_noise", before, after)
    GaussianNoise(std)                                           # checks std
    report = SurgeryReport("add_noise")
    return _hook_all(model, report, "noise", side, where, lambda: GaussianNoise(std), f"Gaussian noise std={std:g}",
                     describe(where))


def add_dropconnect(model: nn.Module, p: float = 0.5, where: Selector = "last:type:Linear") -> SurgeryReport:
    """DropConnect (Wan et al., ICML 2013) on the selected ``nn.Linear``/``nn.Conv2d`` modules of ``model``, in
    place: in training each forward pass uses ``W * M / (1 - p)`` with one mask ``M ~ Bernoulli(1 - p)`` over the
    weights (the bias is kept); eval uses ``W``. Default: the last linear layer (the classifier head).

    The modules' class is swapped for :class:`~traintricks.nn.DropConnectLinear` /
    :class:`~traintricks.nn.DropConnectConv2d` (subclasses of torch's): the same objects, parameters,
    ``state_dict`` keys and hooks. Selected modules of another class (a subclass of ``nn.Linear`` with its own
    forward, ``nn.Conv1d``...) are skipped with the reason.

    Returns the report; raises ``TypeError`` for a non-Module or a bad selector, ``ValueError`` for ``p`` outside
    ``[0, 1)``, :class:`NothingToChangeError` when no selected module can take it."""
    _check(model, "add_dropconnect")
    p = check_probability("add_dropconnect", p)
    report = SurgeryReport("add_dropconnect")
    found = select(model, where)
    for path, m in found:
        if isinstance(m, (DropConnectLinear, DropConnectConv2d)):
            report.skipped.append((path, "it already has DropConnect"))
        elif type(m) in (nn.Linear, nn.Conv2d):
            m.__class__ = DropConnectLinear if type(m) is nn.Linear else DropConnectConv2d
            m.p = p
            report.changed.append((path, f"{type(m).__name__} (p={p:g}), weights kept"))
        else:
            report.skipped.append((path, f"a {type(m).__name__}: DropConnect replaces only nn.Linear and nn.Conv2d"))
    if not found:
        report.notes.append(f"no module matches {describe(where)}")
    return report.require_changes(f"linear or conv2d layers ({describe(where)})")


__all__ = ["add_dropconnect", "add_dropout", "add_noise"]
