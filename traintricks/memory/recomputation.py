"""Gradient checkpointing: keep some activations, recompute the rest in the backward pass.

(Named for what it does, recomputation; the checkpoint *files* of a run are :mod:`traintricks.training.checkpoint`.)

A chain ``y = f_n(... f_1(x))`` normally saves, for backward, what every ``f_i`` needs (``a_i`` bytes). A
*checkpointed segment* ``f_j+1 .. f_k`` runs its forward without saving anything but its input; in backward
it is run again with gradients on (the recomputation), and only then are its ``a_i`` held, one segment at a
time (Chen, Xu, Zhang & Guestrin 2016, arXiv:1604.06174). With ``n`` equal layers in ``sqrt(n)`` segments the
memory falls from ``O(n)`` to ``O(sqrt(n))`` for one extra forward pass.

The recomputation must compute what the forward computed, so it runs in the **state the forward saw**
(:class:`ForwardState`, captured before the segment's forward): every buffer of the segment as it was
before the forward (batch norm's and renorm's running statistics, ``num_batches_tracked`` and thus renorm's
r/d ramp; renorm reads its running statistics in training, so a recomputation that sees this batch's update
gives other gradients), the modules' ``training`` flags and other plain attributes, generators they hold,
and the CPU and accelerator RNG states (random layers replay their masks). It runs on copies of the
buffers: the live ones are updated once, by the forward, as without checkpointing.

:func:`checkpoint_sequential` cuts a chain into equal segments. :func:`plan_checkpoints` chooses, for a
memory budget in bytes, which segments to store and which to recompute so that the predicted peak memory
saved for backward stays under the budget with the least recomputation (dynamic programming over the
chain, after Chen 2016 and Gruslys et al. 2016, arXiv:1606.03401); :class:`CheckpointedSequential` runs a
plan. The memory model, per plan: stored segments hold their ``a_i`` until backward, recomputed segments
hold their input until backward, and during backward one recomputed segment at a time holds its ``a_i``:

    peak = sum_{stored} a_i + sum_{recomputed} input bytes + max_{recomputed} sum_{i in seg} a_i
    recompute = sum_{recomputed} sum_{i in seg} c_i          (c_i: measured forward time of layer i)
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .measure import saved_storages


def autocast_state(x: torch.Tensor) -> tuple[str, bool, torch.dtype]:
    """The autocast state of ``x``'s device, to recompute under the same mixed precision as the forward."""
    dev = x.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


_SCALARS = (bool, int, float, str, type(None))


class ForwardState:
    """What a forward pass of ``modules`` reads besides its inputs and parameters, captured before it runs, so
    that a later re-run (a checkpoint's recomputation, a reversible block's reconstruction) sees exactly what
    the first run saw.

    Captured: a copy of every buffer of every submodule (running statistics, ``num_batches_tracked`` and
    thus batch renorm's r/d ramp step, any other buffer), the submodules' plain Python attributes (the
    ``training`` flags, counters: public ``bool``/``int``/``float``/``str``/``None`` values), the states of
    ``torch.Generator`` s they hold, and the global random number generator states (CPU, and each accelerator
    device among ``tensors`` and the modules' parameters and buffers), so random layers replay their masks.
    Nothing is detected by class: any layer whose forward depends on such state is covered.

    :meth:`replay` runs a block with that state swapped in -- each buffer replaced by a fresh copy of its
    snapshot, which the re-run may update and which is then thrown away -- and puts the live state back on
    exit, so state changed by the first run stays changed exactly once. :meth:`rollback` instead writes the
    snapshot back into the live modules (to undo a forward, e.g. when measuring). Costs one copy of the
    buffers (per-channel vectors for normalization layers) per capture, held as long as the object.
    """

    def __init__(self, modules: nn.Module | Sequence[nn.Module], tensors: Sequence[torch.Tensor] = ()) -> None:
        roots = [modules] if isinstance(modules, nn.Module) else list(modules)
        mods, seen = [], set()
        for root in roots:
            for m in root.modules():
                if id(m) not in seen:
                    seen.add(id(m))
                    mods.append(m)
        self._buffers: list[tuple[nn.Module, str, torch.Tensor, int]] = []
        self._copies: dict[int, torch.Tensor] = {}
        devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
        for m in mods:
            for name, b in m._buffers.items():
                if b is None:
                    continue
                if id(b) not in self._copies:
                    self._copies[id(b)] = b.detach().clone()
                self._buffers.append((m, name, b, id(b)))
                devices.add(b.device)
            devices.update(p.device for p in m._parameters.values() if p is not None)
        self._attrs = [(m, k, v) for m in mods for k, v in vars(m).items()
                       if not k.startswith("_") and isinstance(v, _SCALARS)]
        self._generators = [(g, g.get_state()) for m in mods for k, g in vars(m).items()
                            if isinstance(g, torch.Generator)]
        self._devices = sorted((d for d in devices if d.type not in ("cpu", "meta")), key=str)
        self._rng = (torch.get_rng_state(), [_device_rng(d) for d in self._devices])

    def _set_rng(self, rng) -> None:
        torch.set_rng_state(rng[0])
        for d, s in zip(self._devices, rng[1]):
            _set_device_rng(d, s)

    def _current(self):
        attrs = [vars(m).get(k, _MISSING) for m, k, _ in self._attrs]
        gens = [g.get_state() for g, _ in self._generators]
        rng = (torch.get_rng_state(), [_device_rng(d) for d in self._devices])
        return attrs, gens, rng

    def _put(self, attrs, gens, rng) -> None:
        for (m, k, _), v in zip(self._attrs, attrs):
            if v is _MISSING:
                m.__dict__.pop(k, None)
            else:
                m.__dict__[k] = v
        for (g, _), s in zip(self._generators, gens):
            g.set_state(s)
        self._set_rng(rng)

    @contextmanager
    def replay(self):
        """Run the ``with`` block in the captured state; the live state is restored on exit."""
        live = [m._buffers.get(name) for m, name, _, _ in self._buffers]
        saved = self._current()
        fresh = {k: c.clone() for k, c in self._copies.items()}     # the re-run may update them: a new copy each time
        try:
            for m, name, _, key in self._buffers:
                m._buffers[name] = fresh[key]
            self._put([v for _, _, v in self._attrs], [s for _, s in self._generators], self._rng)
            yield
        finally:
            for (m, name, _, _), b in zip(self._buffers, live):
                m._buffers[name] = b
            self._put(*saved)

    @torch.no_grad()
    def rollback(self) -> None:
        """Write the captured state back into the live modules (undo the forward passes run since)."""
        for m, name, b, key in self._buffers:
            m._buffers[name] = b
            b.copy_(self._copies[key])
        self._put([v for _, _, v in self._attrs], [s for _, s in self._generators], self._rng)


_MISSING = object()


def _device_rng(d: torch.device) -> torch.Tensor:
    mod = torch.get_device_module(d.type)
    try:
        return mod.get_rng_state(d)
    except TypeError:                       # backends whose get_rng_state takes no device
        return mod.get_rng_state()


def _set_device_rng(d: torch.device, state: torch.Tensor) -> None:
    mod = torch.get_device_module(d.type)
    try:
        mod.set_rng_state(state, d)
    except TypeError:
        mod.set_rng_state(state)


class _Recompute(torch.autograd.Function):
    """Run ``segment`` without saving activations; recompute it in backward in the forward's state."""

    @staticmethod
    def forward(ctx, segment, state, x, *params):
        ctx.segment, ctx.state = segment, state
        ctx.autocast = autocast_state(x)
        ctx.save_for_backward(x)
        with torch.no_grad():
            return segment(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        segment = ctx.segment
        dev, enabled, dtype = ctx.autocast
        # the recomputation sees the buffers, flags and RNG states the forward saw, and leaves the live ones
        # (updated once, by the forward) as they are
        with ctx.state.replay(), torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
            xr = x.detach().requires_grad_(x.requires_grad)
            out = segment(xr)
        params = [p for p in segment.parameters() if p.requires_grad]
        inputs = ([xr] if xr.requires_grad else []) + params
        if not inputs or not out.requires_grad:
            return (None, None, None, *[None] * len(params))
        grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
        gx = grads[0] if xr.requires_grad else None
        gp = list(grads[1:] if xr.requires_grad else grads)
        return (None, None, gx, *gp)


def recompute(segment: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``segment(x)`` that saves only ``x`` (and a :class:`ForwardState`: the segment's buffers, flags and RNG
    states) for backward and recomputes the rest there in that state (see the module docstring)."""
    if not torch.is_grad_enabled():
        return segment(x)
    params = [p for p in segment.parameters() if p.requires_grad]
    return _Recompute.apply(segment, ForwardState(segment, [x]), x, *params)


def _as_list(modules) -> list[nn.Module]:
    mods = list(modules.children()) if isinstance(modules, nn.Sequential) else list(modules)
    if not mods:
        raise ValueError("need at least one module")
    return mods


def checkpoint_sequential(functions: nn.Sequential | Sequence[nn.Module], segments: int, input: torch.Tensor,
                          use_reentrant: bool | None = None, **kwargs) -> torch.Tensor:
    """Run ``functions`` on ``input`` in ``segments`` equal recomputed segments: PyTorch's function of the same
    name and arguments ``(functions, segments, input, use_reentrant=None, preserve_rng_state=True)`` (the last
    segment runs normally: its activations are needed first in backward anyway).

    ``use_reentrant``: accepted as PyTorch accepts it (``True``, ``False`` or ``None``, without PyTorch's warning
    for ``None``); every value runs the one recomputation of this module, which gives the gradients of either
    PyTorch variant and has the properties of the non-reentrant one that matter to a caller: parameters get
    gradients even when ``input`` does not require one, ``torch.autograd.grad(outputs, inputs)`` works (no
    ``.backward()`` needed), and the recomputation sees the state the forward saw (module docstring). Like the
    reentrant variant, it gives no double backward through the recomputed segments (the gradient has no graph:
    differentiating it again raises PyTorch's "does not require grad" ``RuntimeError``).

    ``preserve_rng_state``: ``True`` (default) replays the RNG states, as PyTorch does; ``False`` is accepted
    and allows skipping that: the recomputation replays them anyway (with the buffers and flags, in one
    :class:`ForwardState`), so random layers see the forward's masks either way.

    Raises ``ValueError`` for ``segments`` outside ``[1, len(functions)]`` or an unknown keyword (PyTorch's
    message), ``TypeError`` for a non-bool ``use_reentrant`` or ``preserve_rng_state``."""
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(arg for arg in kwargs))
    if use_reentrant is not None and not isinstance(use_reentrant, bool):
        raise TypeError(f"checkpoint_sequential: use_reentrant must be True, False or None, got {use_reentrant!r}")
    if not isinstance(preserve, bool):
        raise TypeError(f"checkpoint_sequential: preserve_rng_state must be True or False, got {preserve!r}")
    mods = _as_list(functions)
    if not 1 <= segments <= len(mods):
        raise ValueError(f"segments must be in [1, {len(mods)}], got {segments}")
    x = input
    for s, e, rc in uniform_segments(len(mods), segments):
        seg = nn.Sequential(*mods[s:e])
        x = recompute(seg, x) if rc else seg(x)
    return x


@dataclass
class LayerCost:
    saved_bytes: int          # a_i: bytes the layer saves for backward in normal mode (its input included)
    output_bytes: int         # o_i: bytes of its output (the next layer's input)
    seconds: float            # c_i: forward time
    input_bytes: int = 0      # bytes of its input
    saves_input: bool = False     # whether its input is among the saved tensors
    saves_output: bool = False    # whether its output is among the saved tensors

    @property
    def other_bytes(self) -> int:
        """Saved bytes that are neither its input nor its output (intermediates)."""
        return self.saved_bytes - self.input_bytes * self.saves_input - self.output_bytes * self.saves_output


@dataclass
class CheckpointPlan:
    """Segments as ``(start, end, recompute)`` over layer indices ``[start, end)``."""
    segments: list[tuple[int, int, bool]]
    predicted_bytes: int
    predicted_recompute_seconds: float
    budget_bytes: int
    layers: list[LayerCost] = field(repr=False, default_factory=list)

    @property
    def kept_layers(self) -> list[int]:
        """Layers whose activations are kept (stored segments)."""
        return [i for s, e, r in self.segments if not r for i in range(s, e)]

    def describe(self) -> str:
        segs = ", ".join(f"[{s}:{e}]{'R' if r else 'S'}" for s, e, r in self.segments)
        return (f"plan {segs} (S stored, R recomputed): predicted {self.predicted_bytes / 2**20:.2f} MiB saved for "
                f"backward (budget {self.budget_bytes / 2**20:.2f} MiB), "
                f"{1e3 * self.predicted_recompute_seconds:.2f} ms recomputation")


def measure_layers(modules: Sequence[nn.Module], example: torch.Tensor, repeats: int = 3) -> list[LayerCost]:
    """Bytes saved for backward, output bytes and forward time of each layer on ``example`` (training mode;
    buffers, flags and RNG states are rolled back afterwards: measuring changes nothing)."""
    costs = []
    x = example
    for m in modules:
        xi = x.detach().requires_grad_(True)
        a, keys, y = _saved_excluding(m, xi)
        state = ForwardState(m, [x])
        with torch.no_grad():
            m(x)                          # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                m(x)
            dt = (time.perf_counter() - t0) / repeats
        state.rollback()
        costs.append(LayerCost(a, y.untyped_storage().nbytes(), dt, xi.untyped_storage().nbytes(),
                               xi.untyped_storage().data_ptr() in keys, y.untyped_storage().data_ptr() in keys))
        x = y.detach()
    return costs


def _saved_excluding(m: nn.Module, xi: torch.Tensor) -> tuple[int, set[int], torch.Tensor]:
    """Bytes ``m`` saves for backward, excluding its parameters (always resident) but including its input;
    the saved storages' keys; the output (its state rolled back afterwards)."""
    state = ForwardState(m, [xi])
    seen, y = saved_storages(lambda: m(xi), exclude=m)
    state.rollback()
    return sum(seen.values()), set(seen), y.detach()


def plan_checkpoints(model: nn.Sequential | Sequence[nn.Module], example_input: torch.Tensor, budget_bytes: int,
                     costs: list[LayerCost] | None = None, *, max_recompute_layers: int | None = None
                     ) -> CheckpointPlan:
    """The plan with the least predicted recomputation whose predicted peak memory saved for backward stays
    within ``budget_bytes`` (see the module docstring); ``ValueError`` naming the least feasible budget if none.

    ``max_recompute_layers``: the most layers one recomputed segment may hold (``None``: any); ``1`` plans for
    layers recomputed one by one (:func:`traintricks.surgery.checkpoint`, which recomputes modules in place)."""
    if max_recompute_layers is not None and max_recompute_layers < 1:
        raise ValueError(f"max_recompute_layers must be >= 1 or None, got {max_recompute_layers}")
    longest = max_recompute_layers
    mods = _as_list(model)
    costs = costs if costs is not None else measure_layers(mods, example_input)
    n = len(costs)
    in_bytes = [example_input.untyped_storage().nbytes()] + [c.output_bytes for c in costs[:-1]]
    seg_a, seg_c = _segment_costs(costs)

    def best_for(cap: int, persist_budget: int):
        """Min recompute with every recomputed segment's internal bytes <= cap and persistent bytes <= budget.
        Pareto frontiers of (persistent bytes, recompute, back-pointer) per prefix."""
        front: list[list[tuple[int, float, tuple]]] = [[(0, 0.0, ())]] + [[] for _ in range(n)]
        for i in range(1, n + 1):
            cands = []
            for j in range(i):
                for mem, rc, path in front[j]:
                    # stored segment j..i
                    m1 = mem + seg_a(j, i)
                    if m1 <= persist_budget:
                        cands.append((m1, rc, path + ((j, i, False),)))
                    # recomputed segment j..i: holds only its input until backward
                    if seg_a(j, i) <= cap and (longest is None or i - j <= longest):
                        m2 = mem + in_bytes[j]
                        if m2 <= persist_budget:
                            cands.append((m2, rc + seg_c(j, i), path + ((j, i, True),)))
            cands.sort(key=lambda t: (t[0], t[1]))
            pruned, best_rc = [], float("inf")
            for c in cands:
                if c[1] < best_rc - 1e-15:
                    pruned.append(c)
                    best_rc = c[1]
            front[i] = pruned[:64]
        return min(front[n], key=lambda t: t[1]) if front[n] else None

    caps = sorted({seg_a(j, i) for j in range(n) for i in range(j + 1, n + 1)} | {0})
    best = None
    for cap in caps:
        if cap > budget_bytes:
            break
        r = best_for(cap, budget_bytes - cap)
        if r is not None:
            peak = r[0] + max([seg_a(s, e) for s, e, rc in r[2] if rc] or [0])
            if best is None or r[1] < best[1] - 1e-15 or (abs(r[1] - best[1]) <= 1e-15 and peak < best[0]):
                best = (peak, r[1], r[2])
    if best is None:
        minimum = _minimum_budget(n, in_bytes, seg_a, longest)
        raise ValueError(f"no checkpoint plan fits in {budget_bytes} bytes ({budget_bytes / 2**20:.2f} MiB); the "
                         f"least feasible budget for this model and input is {minimum} bytes "
                         f"({minimum / 2**20:.2f} MiB)")
    return CheckpointPlan(list(best[2]), best[0], best[1], budget_bytes, costs)


def _segment_costs(costs: list[LayerCost]):
    """``seg_a(j, i)``: bytes layers j..i-1 hold when run with gradients (each layer's intermediates, each
    boundary tensor once if either neighbour saves it, the segment's input if its first layer saves it, its
    output if its last layer does); ``seg_c(j, i)``: their forward seconds."""
    n = len(costs)
    pre_c = [0.0]
    for c in costs:
        pre_c.append(pre_c[-1] + c.seconds)
    table: dict[tuple[int, int], int] = {}
    for j in range(n):
        total = costs[j].input_bytes * costs[j].saves_input
        for i in range(j + 1, n + 1):
            c = costs[i - 1]
            total += c.other_bytes
            nxt_saves_input = i < n and costs[i].saves_input
            table[(j, i)] = total + c.output_bytes * c.saves_output
            total += c.output_bytes * (c.saves_output or nxt_saves_input)
    return (lambda j, i: table[(j, i)]), (lambda j, i: pre_c[i] - pre_c[j])


def evaluate_plan(segments: Sequence[tuple[int, int, bool]], costs: list[LayerCost],
                  input_bytes: int) -> tuple[int, float]:
    """``(predicted peak bytes, predicted recompute seconds)`` of any segmentation under the planner's model
    (e.g. a uniform one, to compare with the planner at equal predicted memory)."""
    seg_a, seg_c = _segment_costs(costs)
    in_bytes = [input_bytes] + [c.output_bytes for c in costs[:-1]]
    persistent = sum(in_bytes[s] if r else seg_a(s, e) for s, e, r in segments)
    transient = max([seg_a(s, e) for s, e, r in segments if r] or [0])
    return persistent + transient, sum(seg_c(s, e) for s, e, r in segments if r)


def uniform_segments(n: int, k: int) -> list[tuple[int, int, bool]]:
    """:func:`checkpoint_sequential`'s segmentation: k equal segments, all but the last recomputed."""
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1], i < k - 1) for i in range(k)]


def _minimum_budget(n: int, in_bytes: list[int], seg_a, longest: int | None = None) -> int:
    """Least predicted peak over all segmentations (recompute ignored), by DP over each cap."""
    best = None
    caps = sorted({seg_a(j, i) for j in range(n) for i in range(j + 1, n + 1)})
    for cap in caps:
        f = [0] + [None] * n
        for i in range(1, n + 1):
            opts = []
            for j in range(i):
                if f[j] is None:
                    continue
                opts.append(f[j] + seg_a(j, i))                 # stored
                if seg_a(j, i) <= cap and (longest is None or i - j <= longest):
                    opts.append(f[j] + in_bytes[j])             # recomputed
            f[i] = min(opts) if opts else None
        if f[n] is not None:
            total = f[n] + cap
            best = total if best is None else min(best, total)
    return int(best)


class CheckpointedSequential(nn.Module):
    """A ``nn.Sequential``-like chain run per a :class:`CheckpointPlan`: give ``plan=`` or ``budget_bytes=`` and
    ``example_input=`` (planned at construction)."""

    def __init__(self, *modules: nn.Module, budget_bytes: int | None = None, example_input: torch.Tensor | None = None,
                 plan: CheckpointPlan | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(modules)
        if plan is None:
            if budget_bytes is None or example_input is None:
                raise ValueError("CheckpointedSequential needs plan=, or budget_bytes= and example_input=")
            was = [m.training for m in self.layers]
            plan = plan_checkpoints(list(self.layers), example_input, budget_bytes)
            for m, t in zip(self.layers, was):
                m.train(t)
        if plan.segments[-1][1] != len(self.layers):
            raise ValueError("the plan does not cover every layer")
        self.plan = plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s, e, rc in self.plan.segments:
            seg = nn.Sequential(*self.layers[s:e])
            x = recompute(seg, x) if rc else seg(x)
        return x

    def extra_repr(self) -> str:
        return self.plan.describe()
