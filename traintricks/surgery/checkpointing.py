"""Gradient checkpointing (recomputation) of any model's blocks, in place: :func:`checkpoint_blocks`, :func:`checkpoint`.

A recomputed module runs its forward without keeping what its backward needs -- only its input is saved -- and runs
again, with gradients on, in the backward pass (Chen, Xu, Zhang & Guestrin 2016, arXiv:1604.06174). The re-run
sees the state the first run saw (:class:`traintricks.memory.ForwardState`: buffers such as batch norm's running
statistics, training flags, RNG states, so dropout masks replay): gradients are those of the unchanged model, and
running statistics are updated once.

The module stays where it was, with its keys and ``isinstance``: its class becomes a subclass
``Checkpointed<Class>`` of :class:`CheckpointedModule` and of its own class (the class-swap of
:mod:`traintricks.nn.stochastic_depth`); :func:`remove_checkpointing` undoes it. Under ``torch.no_grad()`` (and
for a non-tensor first argument, e.g. a ``torch.fx`` proxy) the module runs as before.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..memory.recomputation import measure_layers, plan_checkpoints, recompute
from ..nn.class_swap import ClassSwapMixin
from .probe import probe
from .report import SurgeryReport
from .select import Selector, describe, select

class _BaseCall(nn.Module):
    """The checkpointed module's own forward as a module (what :func:`recompute` runs and re-runs), with the
    call's other (non-differentiable) arguments bound."""

    def __init__(self, module: nn.Module, rest: tuple, kwargs: dict) -> None:
        super().__init__()
        self.inner = module
        self._rest, self._kwargs = rest, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.inner).base_class.forward(self.inner, x, *self._rest, **self._kwargs)


class CheckpointedModule(ClassSwapMixin, nn.Module):
    """A module recomputed in backward (made by :func:`checkpoint_blocks` / :func:`checkpoint`: its class becomes a
    subclass of this one and of its own class). ``forward(x, *args, **kwargs)``: with gradients enabled, its own
    forward through :func:`traintricks.memory.recompute` (saves ``x`` only); the first argument must be the one
    tensor that needs a gradient (``TypeError`` if another argument requires one) and the output one tensor."""

    prefix = "Checkpointed"

    def forward(self, *args, **kwargs):
        base = type(self).base_class
        if not torch.is_grad_enabled() or not args or not isinstance(args[0], torch.Tensor):
            return base.forward(self, *args, **kwargs)
        x, rest = args[0], args[1:]
        if any(isinstance(t, torch.Tensor) and t.requires_grad for t in tree_leaves((rest, kwargs))):
            raise TypeError(f"{type(self).__name__}: a recomputed module takes one tensor that needs a gradient (its "
                            f"first argument); it was called with another one (remove_checkpointing() it)")
        return recompute(_BaseCall(self, rest, kwargs), x)

    def extra_repr(self) -> str:
        own = type(self).base_class.extra_repr(self)
        return f"{own}, recomputed in backward" if own else "recomputed in backward"


def _checkpointed_class(base: type) -> type:
    return CheckpointedModule.subclass(base)


def remove_checkpointing(module: nn.Module) -> nn.Module:
    """Undo the recomputation of ``module`` (its own class back), in place; returns it. ``ValueError`` if it is not
    recomputed."""
    if not isinstance(module, CheckpointedModule):
        raise ValueError(f"remove_checkpointing: {type(module).__name__} is not recomputed")
    module.__class__ = type(module).base_class
    return module


def _why_not(module: nn.Module) -> str | None:
    if isinstance(module, CheckpointedModule):
        return "already recomputed"
    if type(module).forward is nn.Module.forward or isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return f"{type(module).__name__} has no forward of its own (select its items, e.g. 'blocks.*')"
    return None


def _swap(module: nn.Module) -> None:
    module.__class__ = _checkpointed_class(type(module))


def checkpoint_blocks(model: nn.Module, where: Selector) -> SurgeryReport:
    """Recompute every module ``where`` selects in the backward pass instead of keeping its activations, in place.

    Each selected module (a residual block ``"layer*.*"``, a transformer block ``"blocks.*"``,
    ``"type:Bottleneck"``) keeps its path, ``state_dict`` keys and ``isinstance`` (class-swap, see the module
    docstring); it then saves only its input for backward and re-runs its forward there, in the state the forward
    saw (buffers, flags, RNG: gradients equal the unchanged model's). The memory saved for backward falls from
    every selected module's activations to their inputs, plus one module's activations during backward, for one
    extra forward of each. A module inside another selected one is skipped (recomputed with it), as are
    containers without a forward (``nn.ModuleList``) and already recomputed modules.

    The modules must take one tensor needing a gradient as first argument and return one tensor (a
    ``TypeError`` at run time otherwise). Raises ``TypeError`` for a non-module or a bad selector,
    :class:`NothingToChangeError` when nothing was selected or every selected module was skipped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"checkpoint_blocks takes an nn.Module, got {type(model).__name__}")
    report = SurgeryReport("checkpoint_blocks")
    chosen: list[str] = []
    inside = 0
    for name, m in select(model, where):
        if any(c == "" or name.startswith(c + ".") for c in chosen):
            inside += 1                                      # recomputed with the selected module around it
            continue
        why = _why_not(m)
        if why is not None:
            report.skipped.append((name, why))
            continue
        _swap(m)
        chosen.append(name)
        report.changed.append((name, f"{type(m).base_class.__name__} recomputed in backward"))
    if inside:
        report.notes.append(f"{inside} selected module(s) inside recomputed ones were left as they are (recomputed "
                            f"with them)")
    return report.require_changes(describe(where))


# -------------------------------------------------------------------------------------------------- the chain

class _Call:
    __slots__ = ("module", "caller", "input", "version", "output", "callees")

    def __init__(self, module, caller, input):
        self.module, self.caller, self.input, self.output, self.callees = module, caller, input, None, []
        self.version = input._version if input is not None else None


def _runs(calls: list[_Call]) -> list[list[_Call]]:
    """Maximal runs of consecutive calls each taking the previous one's output (the same tensor)."""
    runs, cur = [], []
    for c in calls:
        if cur and c.input is not None and cur[-1].output is not None and c.input is cur[-1].output:
            cur.append(c)
        else:
            if cur:
                runs.append(cur)
            cur = [c] if c.input is not None else []
    if cur:
        runs.append(cur)
    return runs


def _expand(call: _Call) -> list[_Call]:
    """``call``, or -- when its own forward is exactly a chain of its callees from its input to its output (a
    ``Sequential``) -- those callees, expanded likewise."""
    runs = _runs(call.callees)
    if len(runs) == 1 and len(runs[0]) == len(call.callees) and runs[0][0].input is call.input \
            and runs[0][-1].output is call.output and call.output is not None:
        return [e for c in runs[0] for e in _expand(c)]
    return [call]


def find_chain(model: nn.Module, example_input) -> list[tuple[str, nn.Module]]:
    """The chain of blocks of ``model``: modules executed one after the other, each taking the previous one's output
    (the same tensor) as its only input and called once -- of the runs of two or more such modules, the one
    holding the most parameters (then the longest): found by running ``example_input`` (a tensor or a tuple;
    no_grad, every state change rolled back) with forward hooks. A module whose forward is itself such a chain from
    its input to its output (``nn.Sequential``, torchvision's ``layer1``) is replaced by its members, so a ResNet's
    chain is its blocks and a ViT's its ``blocks.*``. Returns ``(path, module)`` pairs in order (empty if none)."""
    return _find_chain(model, example_input)[0]


def _find_chain(model: nn.Module, example_input) -> tuple[list[tuple[str, nn.Module]], torch.Tensor | None]:
    """:func:`find_chain`, and the chain's input on that run (``None`` if it was changed in place afterwards)."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    paths = {id(m): n for n, m in model.named_modules()}
    count: dict[int, int] = {}
    stack: list[_Call] = []
    top: list[_Call] = []

    def pre(mod, args, kwargs):
        x = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None
        call = _Call(mod, stack[-1] if stack else None, x)
        (stack[-1].callees if stack else top).append(call)
        count[id(mod)] = count.get(id(mod), 0) + 1
        stack.append(call)

    def post(mod, args, kwargs, out):
        call = stack.pop()
        call.output = out if isinstance(out, torch.Tensor) else None

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                                                   m.register_forward_hook(post, with_kwargs=True))]
    probe(model, inputs, hooks)
    best: list[_Call] = []

    def score(run: list[_Call]) -> tuple:
        # the chain worth planning: of two or more modules, holding the most parameters, then the longest
        params = {id(p): p.numel() for c in run for p in c.module.parameters()}
        return len(run) >= 2, sum(params.values()), len(run)
    todo = list(top)
    while todo:
        call = todo.pop()
        todo.extend(call.callees)
        for run in _runs(call.callees):
            flat = [e for c in run for e in _expand(c)]
            # split where a module is called more than once (it cannot be recomputed per call)
            piece: list[_Call] = []
            for c in flat + [None]:
                if c is None or count.get(id(c.module), 0) != 1 or id(c.module) not in paths:
                    if piece and (not best or score(piece) > score(best)):
                        best = piece
                    piece = []
                else:
                    piece.append(c)
    first = best[0].input if best and best[0].input._version == best[0].version else None
    return [(paths[id(c.module)], c.module) for c in best], first


def checkpoint(model: nn.Module, example_input, budget_bytes: int) -> SurgeryReport:
    """Recompute as few of ``model``'s blocks as needed for the activations its chain of blocks saves for backward
    to fit in ``budget_bytes``, in place.

    The chain is :func:`find_chain`'s (a ResNet's residual blocks, a ViT's ``blocks.*``: the longest run of modules
    each taking the previous one's output). Each block is measured on the chain's input from ``example_input``
    (:func:`traintricks.memory.measure_layers`: bytes saved for backward, output bytes, forward time; state rolled
    back) and :func:`traintricks.memory.plan_checkpoints` chooses the blocks to recompute, one by one
    (``max_recompute_layers=1``), with the least recomputation time whose predicted peak

        sum_{kept} a_i + sum_{recomputed} input bytes + max_{recomputed} a_i

    stays within the budget. The chosen blocks are recomputed as :func:`checkpoint_blocks` does. Measure with the
    model in the mode it will train in (training mode).

    Returns a :class:`SurgeryReport` (``changed``: the recomputed blocks; ``notes``: the chain, the plan, the
    predicted peak bytes before and after) with ``report.plan`` (the :class:`~traintricks.memory.CheckpointPlan`),
    ``report.chain`` (the chain's paths), ``report.predicted_bytes_before`` / ``_after``.

    Raises ``TypeError`` for a non-module, ``ValueError`` for a negative budget or a budget below the least
    feasible one (the message names that minimum, in bytes and MiB), :class:`NothingToChangeError` when no chain
    is found or the chain's activations already fit (nothing to recompute).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"checkpoint takes an nn.Module, got {type(model).__name__}")
    if not isinstance(budget_bytes, int) or budget_bytes < 0:
        raise ValueError(f"checkpoint: budget_bytes must be a non-negative int, got {budget_bytes!r}")
    report = SurgeryReport("checkpoint")
    chain, first = _find_chain(model, example_input)
    if not chain:
        report.skipped.append(("", "no chain of modules each taking the previous one's output was found"))
        return report.require_changes("chain of blocks")
    names, mods = [n for n, _ in chain], [m for _, m in chain]
    if first is None:                                        # changed in place after the chain read it
        first = _input_of(model, mods[0], example_input)
    costs = measure_layers(mods, first, repeats=1)
    try:
        plan = plan_checkpoints(mods, first, budget_bytes, costs, max_recompute_layers=1)
    except ValueError as e:
        raise ValueError(f"checkpoint: {e} (recomputing the {len(mods)} blocks of the chain {names[0]} .. "
                         f"{names[-1]} one by one)") from None
    before = sum(c.saved_bytes for c in costs)
    report.plan, report.chain = plan, names
    report.predicted_bytes_before, report.predicted_bytes_after = before, plan.predicted_bytes
    report.notes.append(f"chain of {len(names)} blocks: {', '.join(names)}")
    report.notes.append(plan.describe())
    report.notes.append(f"predicted peak saved for backward by the chain: {before} bytes ({before / 2**20:.2f} MiB) "
                        f"before, {plan.predicted_bytes} bytes ({plan.predicted_bytes / 2**20:.2f} MiB) after")
    for s, e, rc in plan.segments:
        for i in range(s, e):
            if rc:
                _swap(mods[i])
                report.changed.append((names[i], f"{type(mods[i]).base_class.__name__} recomputed in backward"))
    if not report.changed:
        report.skipped.append(("", f"the chain's activations ({before} bytes) already fit in {budget_bytes} bytes"))
    return report.require_changes("blocks")


def _input_of(model: nn.Module, module: nn.Module, example_input) -> torch.Tensor:
    """A copy of ``module``'s input when ``model`` runs on ``example_input`` (no_grad, state rolled back)."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    got: list[torch.Tensor] = []

    def pre(mod, args):
        if not got:
            got.append(args[0].detach().clone())
    probe(model, inputs, [module.register_forward_pre_hook(pre)])
    return got[0]
