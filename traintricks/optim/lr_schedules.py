"""Learning-rate schedules as ``torch.optim.lr_scheduler.LRScheduler`` subclasses with closed forms.

Each schedule gives the rate at step ``t`` (``last_epoch``, counted in calls to ``step()``) from a formula,
so values can be checked at any step and a resumed schedule (``state_dict``) continues exactly.
``base`` is each group's initial rate.

| class | rate at step t | reference |
|---|---|---|
| ``StepLR(step_size, gamma)`` | ``base * gamma^floor(t / step_size)`` | |
| ``ExponentialLR(gamma)`` | ``base * gamma^t`` | |
| ``CosineRestarts(T_0, T_mult, eta_min)`` | ``eta_min + (base - eta_min)/2 * (1 + cos(pi * t_cur / T_i))``, periods ``T_0, T_0 T_mult, ...`` | Loshchilov & Hutter 2017 (1608.03983) |
| ``Warmup(schedule, warmup_steps, start_factor)`` | the wrapped schedule's rate times ``start + (1 - start) * t / warmup`` for ``t < warmup`` | Goyal et al. 2017 (1706.02677) |
| ``Cyclic(base_lr, max_lr, step_size_up, mode, gamma)`` | triangle between ``base_lr`` and ``max_lr``; ``triangular2`` halves the amplitude each cycle, ``exp_range`` scales it by ``gamma^t`` | Smith 2017 (1506.01186) |
| ``OneCycle(max_lr, total_steps, pct_start, ...)`` | up from ``max_lr/div`` to ``max_lr`` then down to ``max_lr/(div*final_div)`` (linear or cosine), momentum / beta1 cycled the other way | Smith 2018 (1708.07120) |

:func:`scale_lr` is Goyal et al.'s linear scaling rule, ``lr = base * batch / 256``.
:class:`BatchSizeSchedule` (Smith, Kindermans, Ying & Le 2017, arXiv:1711.00489) increases the batch size at
milestones by the factor a step schedule would have decayed the rate.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


def scale_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """The linear scaling rule (1706.02677): ``base_lr * batch_size / reference_batch``."""
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size}, {reference_batch}")
    return base_lr * batch_size / reference_batch


class ClosedFormLR(LRScheduler):
    """Base class: subclasses define ``rate(t, base)``; momentum cycling via ``momentum(t)`` if any."""

    def rate(self, t: int, base: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        return [self.rate(self.last_epoch, base) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class StepLR(ClosedFormLR):
    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def rate(self, t, base):
        return base * self.gamma ** (t // self.step_size)


class ExponentialLR(ClosedFormLR):
    def __init__(self, optimizer, gamma: float, last_epoch: int = -1) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def rate(self, t, base):
        return base * self.gamma ** t


class CosineRestarts(ClosedFormLR):
    """SGDR: cosine annealing restarted after ``T_0``, then ``T_0 * T_mult``, ... steps (1608.03983)."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if T_0 < 1 or T_mult < 1:
            raise ValueError(f"T_0 and T_mult must be >= 1, got {T_0}, {T_mult}")
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        super().__init__(optimizer, last_epoch)

    def position(self, t: int) -> tuple[int, int]:
        """``(t_cur, T_i)``: steps into the current period and its length."""
        if self.T_mult == 1:
            return t % self.T_0, self.T_0
        i = int(math.log(t / self.T_0 * (self.T_mult - 1) + 1, self.T_mult)) if t >= self.T_0 else 0
        start = self.T_0 * (self.T_mult ** i - 1) // (self.T_mult - 1)
        while t >= start + self.T_0 * self.T_mult ** i:      # guard against floating-point log
            start += self.T_0 * self.T_mult ** i
            i += 1
        while t < start:
            i -= 1
            start -= self.T_0 * self.T_mult ** i
        return t - start, self.T_0 * self.T_mult ** i

    def rate(self, t, base):
        cur, period = self.position(t)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * cur / period)) / 2


class Warmup(ClosedFormLR):
    """Linear warm-up in front of another closed-form schedule (or of a constant rate if ``schedule`` is None)."""

    def __init__(self, optimizer, warmup_steps: int, schedule: ClosedFormLR | None = None,
                 start_factor: float = 0.0, last_epoch: int = -1) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        if schedule is not None and schedule.optimizer is not optimizer:
            raise ValueError("Warmup: the wrapped schedule must drive the same optimizer")
        self.warmup_steps, self.start_factor, self.inner = warmup_steps, start_factor, schedule
        super().__init__(optimizer, last_epoch)

    def rate(self, t, base):
        inner = self.inner.rate(t, base) if self.inner is not None else base
        if t >= self.warmup_steps:
            return inner
        return inner * (self.start_factor + (1 - self.start_factor) * t / self.warmup_steps)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "inner")}
        state["inner"] = self.inner.state_dict() if self.inner is not None else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        inner = state.pop("inner", None)
        self.__dict__.update(state)
        if inner is not None and self.inner is not None:
            self.inner.load_state_dict(inner)


class Cyclic(ClosedFormLR):
    """Cyclical learning rates (1506.01186): triangular, triangular2 or exp_range between base_lr and max_lr."""

    def __init__(self, optimizer, base_lr: float, max_lr: float, step_size_up: int = 2000,
                 step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
                 last_epoch: int = -1) -> None:
        if mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(f"mode must be triangular, triangular2 or exp_range, got {mode!r}")
        if not 0 < base_lr <= max_lr:
            raise ValueError(f"need 0 < base_lr <= max_lr, got {base_lr}, {max_lr}")
        if step_size_up < 1 or (step_size_down is not None and step_size_down < 1):
            raise ValueError("step sizes must be >= 1")
        self.lo, self.hi, self.mode, self.gamma = base_lr, max_lr, mode, gamma
        self.up, self.down = step_size_up, step_size_down if step_size_down is not None else step_size_up
        for g in optimizer.param_groups:
            g["lr"] = base_lr
        super().__init__(optimizer, last_epoch)

    def rate(self, t, base):
        total = self.up + self.down
        cycle, x = divmod(t, total)
        frac = x / self.up if x < self.up else 1 - (x - self.up) / self.down
        scale = {"triangular": 1.0, "triangular2": 0.5 ** cycle, "exp_range": self.gamma ** t}[self.mode]
        return self.lo + (self.hi - self.lo) * frac * scale


class OneCycle(ClosedFormLR):
    """One-cycle policy with momentum cycling (1708.07120)."""

    def __init__(self, optimizer, max_lr: float | Sequence[float], total_steps: int, pct_start: float = 0.3,
                 anneal: str = "cos", div_factor: float = 25.0, final_div_factor: float = 1e4,
                 cycle_momentum: bool = True, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 three_phase: bool = False, last_epoch: int = -1) -> None:
        if total_steps < 2:
            raise ValueError(f"total_steps must be >= 2, got {total_steps}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
        if anneal not in ("cos", "linear"):
            raise ValueError(f"anneal must be 'cos' or 'linear', got {anneal!r}")
        maxes = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * len(optimizer.param_groups)
        self.total, self.pct, self.anneal, self.three_phase = total_steps, pct_start, anneal, three_phase
        self.div, self.final_div = div_factor, final_div_factor
        self.max_lrs = maxes
        self.cycle_momentum = cycle_momentum and any(k in optimizer.defaults for k in ("momentum", "betas"))
        self.base_m, self.max_m = base_momentum, max_momentum
        if last_epoch == -1:
            for g, m in zip(optimizer.param_groups, maxes):
                g["lr"] = m / div_factor
                g["initial_lr"] = m / div_factor
        super().__init__(optimizer, last_epoch)

    def _phases(self, total: int | None = None) -> list[tuple[float, float, float, float, float]]:
        """(end_step, lr_start_factor, lr_end_factor, m_start, m_end); lr factors relative to max_lr, for a
        cycle of ``total`` steps (default: the whole schedule)."""
        total = self.total if total is None else total
        up = float(self.pct * total) - 1
        lo, fin = 1 / self.div, 1 / (self.div * self.final_div)
        if self.three_phase:
            return [(up, lo, 1.0, self.max_m, self.base_m), (2 * up, 1.0, lo, self.base_m, self.max_m),
                    (total - 1, lo, fin, self.max_m, self.max_m)]
        return [(up, lo, 1.0, self.max_m, self.base_m), (total - 1, 1.0, fin, self.base_m, self.max_m)]

    def _interp(self, a: float, b: float, frac: float) -> float:
        if self.anneal == "cos":
            return b + (a - b) / 2 * (1 + math.cos(math.pi * frac))
        return a + (b - a) * frac

    def _at(self, t: int, total: int | None = None) -> tuple[float, float]:
        start = 0.0
        phases = self._phases(total)
        for i, (end, a, b, ma, mb) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                frac = min(1.0, max(0.0, (t - start) / (end - start))) if end > start else 1.0
                return self._interp(a, b, frac), self._interp(ma, mb, frac)
            start = end
        raise AssertionError

    def get_lr(self) -> list[float]:
        t = self.last_epoch
        factor, m = self._at(t)
        if self.cycle_momentum:
            for g in self.optimizer.param_groups:
                if "betas" in g:
                    g["betas"] = (m, *g["betas"][1:])
                else:
                    g["momentum"] = m
        return [mx * factor for mx in self.max_lrs]

    def rate(self, t, base):
        return self._at(t)[0] * (base * self.div)


class MultiCycle(OneCycle):
    """Consecutive one-cycles ("restarts" of the one-cycle policy; Smith 2018, 1708.07120, restarted as in SGDR,
    Loshchilov & Hutter 2017, 1608.03983). Cycle ``i`` covers ``cycle_steps[i]`` steps and peaks at
    ``peaks[i] * max_lr``; inside it, rate and momentum follow :class:`OneCycle`'s formula for a cycle of that
    length: up from ``peak / div_factor`` over ``pct_start`` of it, then down to ``peak / (div_factor *
    final_div_factor)``. A short first cycle gives a usable model early; later cycles continue from it."""

    def __init__(self, optimizer, max_lr: float | Sequence[float], cycle_steps: Sequence[int],
                 peaks: Sequence[float] | None = None, **kwargs) -> None:
        steps = [int(n) for n in cycle_steps]
        peaks = [1.0] * len(steps) if not peaks else [float(p) for p in peaks]
        if not steps or any(n < 2 for n in steps):
            raise ValueError(f"every cycle needs >= 2 steps, got {steps}")
        if len(peaks) != len(steps) or any(p <= 0 for p in peaks):
            raise ValueError(f"peaks must be {len(steps)} positive factors (one per cycle), got {peaks}")
        starts = [sum(steps[:i]) for i in range(len(steps))]
        self.cycles = list(zip(starts, steps, peaks))
        maxes = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * len(optimizer.param_groups)
        super().__init__(optimizer, max_lr=maxes, total_steps=sum(steps), **kwargs)

    def _at(self, t: int, total: int | None = None) -> tuple[float, float]:
        for i, (start, n, peak) in enumerate(self.cycles):
            if t < start + n or i == len(self.cycles) - 1:
                factor, m = super()._at(t - start, n)
                return factor * peak, m
        raise AssertionError


class BatchSizeSchedule:
    """Increase the batch size by ``factor`` at each epoch in ``milestones`` instead of decaying the rate
    (1711.00489). ``set_epoch(epoch, loader)`` sets ``loader.batch_size`` to ``base * factor^k`` where ``k`` is
    the number of milestones passed (a closed form, so resuming at any epoch is exact); the trainer calls
    it at the start of every epoch when the schedule has it. ``max_batch_size`` caps the growth."""

    def __init__(self, base_batch_size: int, milestones: Sequence[int], factor: int = 5,
                 max_batch_size: int | None = None) -> None:
        if base_batch_size < 1 or factor < 1:
            raise ValueError(f"base_batch_size and factor must be >= 1, got {base_batch_size}, {factor}")
        if list(milestones) != sorted(milestones) or any(m < 1 for m in milestones):
            raise ValueError(f"milestones must be increasing epoch numbers >= 1, got {list(milestones)}")
        self.base, self.milestones, self.factor, self.cap = base_batch_size, list(milestones), factor, max_batch_size

    def batch_size(self, epoch: int) -> int:
        k = sum(epoch >= m for m in self.milestones)
        b = self.base * self.factor ** k
        return min(b, self.cap) if self.cap else b

    def set_epoch(self, epoch: int, loader: Any) -> None:
        loader.batch_size = self.batch_size(epoch)


class ConstantLR(ClosedFormLR):
    """The base rate at every step."""

    def rate(self, t, base):
        return base


class BatchSizeLR(ConstantLR):
    """A constant rate plus a :class:`BatchSizeSchedule`: what the config's ``batch_size_increase`` builds."""

    def __init__(self, optimizer, batch_schedule: BatchSizeSchedule, last_epoch: int = -1) -> None:
        self.batch_schedule = batch_schedule
        super().__init__(optimizer, last_epoch)

    def set_epoch(self, epoch: int, loader: Any) -> None:
        self.batch_schedule.set_epoch(epoch, loader)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "batch_schedule")}
