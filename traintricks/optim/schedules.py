"""Learning-rate schedules by name, stepped once per optimizer step.

A config name binds a class of :mod:`.lr_schedules`: its options are the class's own arguments with the class's
defaults (read from its signature, so they live in one place), plus lengths given in epochs, which the factory
turns into steps with ``steps_per_epoch``. A recipe that wants other values sets them in its config
(``traintricks.config.DEFAULTS`` does for the default recipe).

One-cycle (Smith 2018, arXiv:1708.07120): the rate rises from ``lr/div_factor`` to ``lr`` over the
first ``pct_start`` of training, then falls to ``lr/(div_factor*final_div_factor)``, while
momentum cycles the other way. Cosine (Loshchilov & Hutter 2017, arXiv:1608.03983) with linear
warm-up (Goyal et al. 2017, arXiv:1706.02677): ``lr_t = lr * t/T_w`` for ``t < T_w``, then
``lr/2 * (1 + cos(pi * (t - T_w)/(T - T_w)))``.

``min_warmup_steps`` (``onecycle``, ``multicycle``): a cycle reaches its peak only if its warm-up (``pct_start``
of its steps) lasts at least that many optimizer steps; a shorter cycle peaks at ``peak * warm-up / min_warmup_steps``,
so the rate never rises faster than a ``min_warmup_steps``-step warm-up would raise it (a rate that jumps to its
peak in a few steps sends a fresh network to chance: issue 15 item 13). 0 = off.

A run too short for a schedule's options never fails (issue 15 item 13): each name falls back to a sane schedule
for the run's length and says so in one warning -- ``multicycle`` one one-cycle over the run, ``cosine`` a warm-up
of half the run, ``cosine_restarts`` one period over the run, ``cyclic`` one cycle over the run; ``step`` (no
decay inside the run) and ``batch_size_increase`` (no milestone inside it) keep the constant rate / batch size.
"""
from __future__ import annotations

import inspect
import math
import warnings

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from .lr_schedules import (BatchSizeLR, BatchSizeSchedule, ConstantLR, CosineRestarts, Cyclic, ExponentialLR,
                           MultiCycle, OneCycle, StepLR)

from ..registry import Registry

SCHEDULES = Registry("schedule", section="weight update")


def _default(cls: type, name: str):
    """The default of ``cls``'s constructor argument ``name``: the one set of defaults a config name binds."""
    return inspect.signature(cls.__init__).parameters[name].default


@SCHEDULES.register("constant")
def constant(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """Constant learning rate."""
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer has a momentum (or Adam beta1) for a one-cycle to cycle."""
    return "momentum" in optimizer.defaults or "betas" in optimizer.defaults


def _warmup_cap(steps: int, pct_start: float, min_warmup_steps: int) -> float:
    """The peak factor of a cycle of ``steps`` steps whose warm-up must last ``min_warmup_steps``."""
    if min_warmup_steps <= 0:
        return 1.0
    return min(1.0, pct_start * steps / min_warmup_steps)


@SCHEDULES.register("onecycle")
def onecycle(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
             pct_start: float = _default(OneCycle, "pct_start"), div_factor: float = _default(OneCycle, "div_factor"),
             final_div_factor: float = _default(OneCycle, "final_div_factor"),
             anneal: str = _default(OneCycle, "anneal"), cycle_momentum: bool = _default(OneCycle, "cycle_momentum"),
             base_momentum: float = _default(OneCycle, "base_momentum"),
             max_momentum: float = _default(OneCycle, "max_momentum"),
             three_phase: bool = _default(OneCycle, "three_phase"), min_warmup_steps: int = 0) -> LRScheduler:
    """One-cycle policy: rate up then down, momentum down then up (Smith 2018, 1708.07120)."""
    if min_warmup_steps < 0:
        raise ValueError(f"min_warmup_steps must be >= 0, got {min_warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    # OneCycleLR ends its cycle at step total_steps - 1; the trainer steps the schedule after every one
    # of the total_steps updates, so one extra step makes the last update's rate the cycle's last.
    # (OneCycle checks pct_start and anneal.)
    cap = _warmup_cap(total_steps + 1, pct_start, min_warmup_steps)
    max_lr = [g["lr"] * cap for g in optimizer.param_groups]
    return OneCycle(optimizer, max_lr=max_lr, total_steps=total_steps + 1, pct_start=pct_start,
                    div_factor=div_factor, final_div_factor=final_div_factor, anneal=anneal,
                    cycle_momentum=cycle_momentum and _has_momentum(optimizer), base_momentum=base_momentum,
                    max_momentum=max_momentum, three_phase=three_phase)


@SCHEDULES.register("multicycle")
def multicycle(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
               cycle_epochs: list[float] = (), peaks: list[float] = (),
               pct_start: float = _default(OneCycle, "pct_start"), div_factor: float = _default(OneCycle, "div_factor"),
               final_div_factor: float = _default(OneCycle, "final_div_factor"),
               anneal: str = _default(OneCycle, "anneal"), cycle_momentum: bool = _default(OneCycle, "cycle_momentum"),
               base_momentum: float = _default(OneCycle, "base_momentum"),
               max_momentum: float = _default(OneCycle, "max_momentum"), min_warmup_steps: int = 0) -> LRScheduler:
    """Consecutive one-cycles of cycle_epochs epochs each (rescaled to the run's length), peaking at peaks x lr.

    A run too short for the cycles (a cycle of fewer than 2 steps) gets one one-cycle over the whole run, peaking
    at the first peak, with a warning saying so."""
    if not cycle_epochs or any(e <= 0 for e in cycle_epochs):
        raise ValueError(f"cycle_epochs must list each cycle's (positive) length in epochs, e.g. [6, 20]; "
                         f"got {list(cycle_epochs)}")
    if peaks and (len(peaks) != len(cycle_epochs) or any(p <= 0 for p in peaks)):
        raise ValueError(f"peaks must be {len(cycle_epochs)} positive factors (one per cycle), got {list(peaks)}")
    if min_warmup_steps < 0:
        raise ValueError(f"min_warmup_steps must be >= 0, got {min_warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    # lengths for a run of sum(cycle_epochs) epochs; a run of another length scales them in proportion
    bounds = [int(round(total_steps * sum(cycle_epochs[:i + 1]) / sum(cycle_epochs))) for i in range(len(cycle_epochs))]
    steps = [b - a for a, b in zip([0] + bounds[:-1], bounds)]
    peaks = list(peaks) or [1.0] * len(steps)
    if any(n < 2 for n in steps):
        warnings.warn(f"schedule multicycle: cycle_epochs {list(cycle_epochs)} would make a cycle of fewer than 2 "
                      f"steps in this {total_steps}-step run ({steps}); using one one-cycle over the "
                      f"{total_steps} steps instead", stacklevel=2)
        steps, peaks = [total_steps], peaks[:1]
    steps[-1] += 1               # as in onecycle: the last update gets the cycle's last rate
    peaks = [p * _warmup_cap(n, pct_start, min_warmup_steps) for p, n in zip(peaks, steps)]
    return MultiCycle(optimizer, [g["lr"] for g in optimizer.param_groups], steps, peaks,
                      pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
                      anneal=anneal, cycle_momentum=cycle_momentum and _has_momentum(optimizer),
                      base_momentum=base_momentum, max_momentum=max_momentum)


@SCHEDULES.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
           warmup_epochs: float = 0.0, min_factor: float = 0.0) -> LRScheduler:
    """Linear warm-up (1706.02677) then cosine decay to lr*min_factor (1608.03983).

    A run too short for its warm-up (``warmup_epochs`` not shorter than the run) warms up over half the run
    instead (rounded down), with a warning saying so."""
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warm = int(round(warmup_epochs * steps_per_epoch))
    if warm >= total_steps:
        half = total_steps // 2
        warnings.warn(f"schedule cosine: warmup_epochs {warmup_epochs} ({warm} steps) is not shorter than this "
                      f"{total_steps}-step run; warming up over {half} steps (half the run) instead", stacklevel=2)
        warm = half

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        frac = min(1.0, (t - warm) / max(1, total_steps - warm))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * frac))

    return LambdaLR(optimizer, factor)


@SCHEDULES.register("step")
def step(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
         step_epochs: int = 10, gamma: float = _default(StepLR, "gamma")) -> LRScheduler:
    """Step decay: multiply the rate by gamma every step_epochs epochs.

    A run too short for one decay keeps the rate constant, with a warning saying so."""
    if step_epochs < 1:
        raise ValueError(f"step_epochs must be >= 1, got {step_epochs}")
    size = step_epochs * steps_per_epoch
    if size >= total_steps:
        warnings.warn(f"schedule step: step_epochs {step_epochs} ({size} steps) is not shorter than this "
                      f"{total_steps}-step run; the rate never decays (a constant rate)", stacklevel=2)
    return StepLR(optimizer, step_size=size, gamma=gamma)


@SCHEDULES.register("exponential")
def exponential(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                gamma_per_epoch: float = 0.9) -> LRScheduler:
    """Exponential decay: the rate times gamma_per_epoch every epoch, applied smoothly per step."""
    if not gamma_per_epoch > 0:
        raise ValueError(f"gamma_per_epoch must be > 0, got {gamma_per_epoch}")
    return ExponentialLR(optimizer, gamma_per_epoch ** (1.0 / steps_per_epoch))


@SCHEDULES.register("cosine_restarts")
def cosine_restarts(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                    first_epochs: float = 2.0, mult: int = _default(CosineRestarts, "T_mult"),
                    min_factor: float = 0.0) -> LRScheduler:
    """SGDR: cosine annealing with warm restarts, periods first_epochs * mult^i (1608.03983).

    A run shorter than the first period (which would end mid-way down it) gets one cosine period over the whole
    run, with a warning saying so."""
    if not first_epochs > 0:
        raise ValueError(f"first_epochs must be > 0, got {first_epochs}")
    t0 = max(1, int(round(first_epochs * steps_per_epoch)))
    if t0 > total_steps >= 1:
        warnings.warn(f"schedule cosine_restarts: first_epochs {first_epochs} ({t0} steps) is longer than this "
                      f"{total_steps}-step run; using one cosine period over the {total_steps} steps instead",
                      stacklevel=2)
        t0 = total_steps
    return CosineRestarts(optimizer, t0, mult, eta_min=min_factor * optimizer.param_groups[0]["lr"])


@SCHEDULES.register("cyclic")
def cyclic(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, min_factor: float = 0.1,
           half_cycle_epochs: float = 2.0, mode: str = _default(Cyclic, "mode"), gamma: float = _default(Cyclic, "gamma"),
           cycle_momentum: bool = _default(Cyclic, "cycle_momentum"),
           base_momentum: float = _default(Cyclic, "base_momentum"),
           max_momentum: float = _default(Cyclic, "max_momentum")) -> LRScheduler:
    """Cyclical rates between lr*min_factor and lr (per group), momentum the other way: triangular, triangular2
    or exp_range (1506.01186)."""
    if mode not in ("triangular", "triangular2", "exp_range"):
        raise ValueError(f"mode must be triangular, triangular2 or exp_range, got {mode!r}")
    if not half_cycle_epochs > 0:
        raise ValueError(f"half_cycle_epochs must be > 0, got {half_cycle_epochs}")
    half = max(1, int(round(half_cycle_epochs * steps_per_epoch)))
    if 2 * half > total_steps >= 2:
        warnings.warn(f"schedule cyclic: half_cycle_epochs {half_cycle_epochs} ({half} steps) leaves no whole cycle "
                      f"in this {total_steps}-step run; using half-cycles of {total_steps // 2} steps (one cycle "
                      f"over the run) instead", stacklevel=2)
        half = total_steps // 2
    hi = [g["lr"] for g in optimizer.param_groups]
    return Cyclic(optimizer, [h * min_factor for h in hi], hi, half, mode=mode, gamma=gamma,
                  cycle_momentum=cycle_momentum and _has_momentum(optimizer), base_momentum=base_momentum,
                  max_momentum=max_momentum)


@SCHEDULES.register("batch_size_increase")
def batch_size_increase(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                        batch_size: int = 128, milestones: list[int] = (5, 10), factor: int = 2,
                        max_batch_size: int = 0) -> LRScheduler:
    """Keep the rate, multiply the batch size by factor at each milestone epoch instead (1711.00489).

    A run that ends before the first milestone keeps its batch size, with a warning saying so."""
    epochs = total_steps / max(1, steps_per_epoch)
    if milestones and min(milestones) >= epochs:
        warnings.warn(f"schedule batch_size_increase: milestones {list(milestones)} all fall at or after the end of "
                      f"this {epochs:g}-epoch run; the batch size never grows", stacklevel=2)
    return BatchSizeLR(optimizer, BatchSizeSchedule(batch_size, list(milestones), factor, max_batch_size or None))


@SCHEDULES.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, factor: float = 0.1,
            patience: int = 10, threshold: float = 1e-4, mode: str = "min", cooldown: int = 0,
            min_lr: float = 0.0) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Divide the rate by 1/factor when the monitored metric (schedule.monitor, default val_loss) stops improving."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                                                      threshold=threshold, cooldown=cooldown, min_lr=min_lr)
