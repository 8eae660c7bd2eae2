"""Learning-rate (and batch-size) schedules: the classes, ``torch.optim.lr_scheduler.LRScheduler`` subclasses,
and the config names that bind them (:data:`SCHEDULES`).

Two kinds, as in ``torch.optim.lr_scheduler`` (``docs/compatibility.md``):

* **Chainable** schedules change the rate the optimizer holds *now* (multiply it by a factor at some steps), so
  several of them compose: stepped together, or inside torch's ``ChainedScheduler`` / ``SequentialLR``, their
  factors multiply. Each also has ``_get_closed_form_lr()``, the rate at ``last_epoch`` from the base rates
  (what torch uses for ``step(epoch)`` and ``SequentialLR``'s milestones). :class:`StepLR`,
  :class:`ExponentialLR` and :class:`ConstantLR` *are* torch's classes (subclasses with clearer argument checks),
  so values, ``state_dict`` and composition are torch's by construction; :class:`Warmup` (a linear warm-up,
  torch's twin ``LinearLR``) and :class:`BatchSizeLR` (rate unchanged) are chainable too.
* **Closed-form owners** set the rate from a formula of the step and the base rates, overwriting whatever other
  schedules did, exactly as their torch twins do: :class:`CosineRestarts` (``CosineAnnealingWarmRestarts``),
  :class:`Cyclic` (``CyclicLR``, a subclass of it), :class:`OneCycle` and :class:`MultiCycle` (``OneCycleLR``).
  Put an owner first in a ``ChainedScheduler`` and chainable factors after it.

``t`` is ``last_epoch``, counted in calls to ``step()``; ``base`` is each group's initial rate.

| class | rate at step t | reference |
|---|---|---|
| ``StepLR(step_size, gamma=0.1)`` | ``base * gamma^floor(t / step_size)`` | |
| ``ExponentialLR(gamma)`` | ``base * gamma^t`` | |
| ``ConstantLR(factor=1/3, total_iters=5)`` | ``base * factor`` for ``t < total_iters``, then ``base`` | |
| ``CosineRestarts(T_0, T_mult, eta_min)`` | ``eta_min + (base - eta_min)/2 * (1 + cos(pi * t_cur / T_i))``, periods ``T_0, T_0 T_mult, ...`` | Loshchilov & Hutter 2017 (1608.03983) |
| ``Warmup(warmup_steps, schedule, start_factor)`` | the current (or wrapped schedule's) rate times ``start + (1 - start) * t / warmup`` for ``t < warmup`` | Goyal et al. 2017 (1706.02677) |
| ``Cyclic(base_lr, max_lr, step_size_up, mode, gamma, ...)`` | triangle between ``base_lr`` and ``max_lr``, momentum the other way; ``triangular2`` halves the amplitude each cycle, ``exp_range`` scales it by ``gamma^t`` | Smith 2017 (1506.01186) |
| ``OneCycle(max_lr, total_steps, pct_start, ...)`` | up from ``max_lr/div`` to ``max_lr`` then down to ``max_lr/(div*final_div)`` (linear or cosine), momentum / beta1 cycled the other way | Smith 2018 (1708.07120) |

:func:`scale_lr` is Goyal et al.'s linear scaling rule, ``lr = base * batch / 256``.
:class:`BatchSizeSchedule` (Smith, Kindermans, Ying & Le 2017, arXiv:1711.00489) increases the batch size at
milestones by the factor a step schedule would have decayed the rate.

**By name** (:data:`SCHEDULES`, the config's ``schedule.name``; each a schedule stepped once per optimizer step).
A config name binds one of the classes above: its options are the class's own arguments with the class's
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
from typing import Any, Callable, Sequence

import torch
from torch.optim import lr_scheduler as _torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ..errors import warn
from ..callback import Callback
from ..registry import Registry


def scale_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """The linear scaling rule (1706.02677): ``base_lr * batch_size / reference_batch``."""
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size}, {reference_batch}")
    return base_lr * batch_size / reference_batch


def _per_group(name: str, optimizer: torch.optim.Optimizer, value: Any) -> list:
    """``value`` for each param group: a list of one value per group, or one value for all (torch's rule)."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"{name} must have the same length as optimizer.param_groups. {name} has "
                             f"{len(value)} values, param_groups has {len(optimizer.param_groups)}.")
        return list(value)
    return [value] * len(optimizer.param_groups)


def _check_gamma(gamma: float) -> None:
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")


# ----------------------------------------------------------------------------------------------- chainable
class ScheduleWarning(UserWarning):
    """A schedule adjusted to a run it does not fit as configured (a cycle too short to warm up, a warm-up or
    step longer than the run...): the warning says what was done instead. Filter it by this category."""


class StepLR(_torch.StepLR):
    """Multiply the rate by ``gamma`` every ``step_size`` steps: ``torch.optim.lr_scheduler.StepLR`` itself.

    Chainable: at steps ``step_size, 2 step_size, ...`` the *current* rate is multiplied by ``gamma``, so it
    composes with other chainable schedules (``StepLR(opt, 2, 0.1)`` and ``ExponentialLR(opt, 0.5)`` stepped
    together on ``lr = 1`` give 0.5, 0.025, 0.0125, 0.000625); closed form ``base * gamma^floor(t / step_size)``.

    Args:
        optimizer: the wrapped optimizer.
        step_size (int): period of the decay in steps (>= 1).
        gamma (float): multiplicative factor (>= 0). Default 0.1.
        last_epoch (int): index of the last step when resuming. Default -1.

    Raises:
        ValueError: ``step_size`` is not an integer >= 1 (torch fails later, with ``ZeroDivisionError``, or
            decays at negative periods), or ``gamma`` is negative or not finite.
        KeyError: ``last_epoch >= 0`` but the groups have no ``initial_lr`` (torch's error).

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = StepLR(opt, step_size=2, gamma=0.1)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        _check_gamma(gamma)
        super().__init__(optimizer, step_size, gamma, last_epoch)


class ExponentialLR(_torch.ExponentialLR):
    """Multiply the rate by ``gamma`` every step: ``torch.optim.lr_scheduler.ExponentialLR`` itself.

    Chainable (multiplies the current rate); closed form ``base * gamma^t``.

    Args:
        optimizer: the wrapped optimizer.
        gamma (float): multiplicative factor per step (>= 0).
        last_epoch (int): index of the last step when resuming. Default -1.

    Raises:
        ValueError: ``gamma`` is negative or not finite (torch would give rates of alternating sign).

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = ExponentialLR(opt, gamma=0.9)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float, last_epoch: int = -1) -> None:
        _check_gamma(gamma)
        super().__init__(optimizer, gamma, last_epoch)


class ConstantLR(_torch.ConstantLR):
    """The rate times ``factor`` for the first ``total_iters`` steps, then the rate itself:
    ``torch.optim.lr_scheduler.ConstantLR`` itself (same arguments and defaults, ``factor=1/3``,
    ``total_iters=5``). Chainable: multiplies the current rate by ``factor`` at step 0 and divides it back at step
    ``total_iters``. ``ConstantLR(opt, factor=1.0, total_iters=0)`` leaves the rate alone (the ``constant``
    schedule of a config).

    Args:
        optimizer: the wrapped optimizer.
        factor (float): in [0, 1]. Default 1/3.
        total_iters (int): steps at the reduced rate (>= 0). Default 5.
        last_epoch (int): index of the last step when resuming. Default -1.

    Raises:
        ValueError: ``factor`` outside [0, 1] (torch's message), ``total_iters`` not an integer >= 0.

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = ConstantLR(opt, factor=0.5, total_iters=4)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        if isinstance(total_iters, bool) or not isinstance(total_iters, int) or total_iters < 0:
            raise ValueError(f"total_iters must be an integer >= 0, got {total_iters!r}")
        super().__init__(optimizer, factor, total_iters, last_epoch)


class Warmup(LRScheduler):
    """Linear warm-up (Goyal et al. 2017, 1706.02677): the rate times
    ``f(t) = start_factor + (1 - start_factor) * t / warmup_steps`` for ``t < warmup_steps``, then times 1.

    Chainable like torch's ``LinearLR`` (its twin: ``Warmup(opt, n, start_factor=s)`` gives
    ``LinearLR(opt, s, 1.0, n)``'s rates), and unlike ``LinearLR`` it also allows ``start_factor = 0`` (the
    default). The rate without the warm-up factor is kept, so what other chainable schedules do to the rate --
    stepped before or after this one, in a ``ChainedScheduler`` or by hand -- is carried through: the rate at step
    ``t`` is ``f(t)`` times the rate the other schedules produce (``ExponentialLR(opt, 0.9)`` beside
    ``Warmup(opt, 4)`` on ``lr = 1``, either order: 0.225, 0.405, 0.54675, 0.6561).

    A factor of exactly 0 would hide what the others do to the rate at that step (``0 * gamma = 0``: torch's
    ``LinearLR`` refuses ``start_factor = 0`` for this reason), so a zero factor is applied as
    ``ZERO = 2**-100`` (about 7.9e-31): the rate at step 0 is ``lr * 2**-100``, which moves no float32/float64
    weight whose magnitude is above ~1e-22 (a zero bias moves by < 1e-30 times its gradient), and the others'
    factor is read back exactly (a power of two). A rate found far above that (``> lr * 2**-50``) after a zero
    step was *set* by someone else (a closed-form owner, an optimizer that learns its rate) rather than
    multiplied, and is taken as the rate to warm up. After a closed-form owner in a ``ChainedScheduler`` it
    behaves as ``LinearLR`` there (the owner's new rate times ``f(t) / f(t - 1)``); to warm up an owner, wrap it.

    With ``schedule``, it wraps that schedule (any ``LRScheduler`` on the same optimizer): each step the wrapped
    schedule steps on its own rates, then the factor is applied (a factor of 0 exactly: nothing is read back).

    Args:
        optimizer: the wrapped optimizer.
        warmup_steps (int): length of the warm-up (>= 0; 0 = no warm-up).
        schedule (LRScheduler | None): a schedule to wrap (stepped by this one), or None.
        start_factor (float): the factor at step 0, in [0, 1]. Default 0.
        last_epoch (int): index of the last step when resuming. Default -1.

    Raises:
        ValueError: ``warmup_steps < 0``, ``start_factor`` outside [0, 1], or ``schedule`` drives another
            optimizer.

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
        >>> sched = Warmup(opt, 5, StepLR(opt, 10, 0.1))
    """

    ZERO = 2.0 ** -100       # a factor of 0 as applied (see above)
    _SET = 2.0 ** 50         # a rate this many times the one written after a zero factor was set, not multiplied

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: LRScheduler | None = None,
                 start_factor: float = 0.0, last_epoch: int = -1) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        if schedule is not None and schedule.optimizer is not optimizer:
            raise ValueError("Warmup: the wrapped schedule must drive the same optimizer")
        self.warmup_steps, self.start_factor, self.inner = warmup_steps, start_factor, schedule
        self._under: list | None = None       # the rate without the warm-up factor, per group
        self._written: list | None = None     # the rate this schedule last wrote, per group
        super().__init__(optimizer, last_epoch)

    def factor(self, t: float) -> float:
        """The warm-up factor at step ``t`` (0 at ``t = 0`` when ``start_factor = 0``)."""
        if t >= self.warmup_steps:
            return 1.0
        return self.start_factor + (1 - self.start_factor) * max(t, 0) / self.warmup_steps

    def _applied(self, t: float) -> float:
        """The factor as written into the optimizer: ``factor(t)``, with 0 as :attr:`ZERO` unless this schedule
        wraps one (the wrapped schedule steps on the rates kept here, so nothing is read back from a zero)."""
        f = self.factor(t)
        return f if f > 0 or self.inner is not None else self.ZERO

    def _lrs(self) -> list:
        """The groups' rates (tensor rates copied, never aliased, as torch's schedulers keep them)."""
        return [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in self.optimizer.param_groups]

    def _carried(self, under, current, written, prev: float):
        """The rate without the warm-up factor, given the rate found now and the one written at the last step
        (with factor ``prev``): unchanged if nobody touched it, else the others' change carried through."""
        if bool(current == written):
            return under
        if prev == self.ZERO and bool(abs(current) > abs(written) * self._SET):
            return current                     # set by someone else after a zero step, not multiplied
        return current / prev

    def get_lr(self) -> list:
        t = self.last_epoch
        if self.inner is not None:
            if self._under is not None:            # let the wrapped schedule step from its own rates
                for g, lr in zip(self.optimizer.param_groups, self._under):
                    _torch._update_param_group_val(g, "lr", lr)
            if not self._is_initial:
                self.inner.step()
            self._under = self._lrs()
        else:
            current = self._lrs()
            if self._under is None or self._is_initial:
                self._under = current
            else:                                  # what others did to the rate since we wrote it
                prev = self._applied(t - 1)
                self._under = [self._carried(u, c, w, prev) for u, c, w in zip(self._under, current, self._written)]
        f = self._applied(t)
        self._written = [u * f for u in self._under]
        return list(self._written)

    def _get_closed_form_lr(self) -> list:
        if self.inner is not None and hasattr(self.inner, "_get_closed_form_lr"):
            if hasattr(self.inner, "_set_epoch"):
                self.inner._set_epoch(self.last_epoch)
            else:
                self.inner.last_epoch = self.last_epoch
            under = self.inner._get_closed_form_lr()
        else:
            under = list(self.base_lrs)
        self._under = list(under)
        f = self._applied(self.last_epoch)
        self._written = [u * f for u in under]
        return list(self._written)

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


class BatchSizeSchedule(Callback):
    """Increase the batch size by ``factor`` at each epoch in ``milestones`` instead of decaying the rate
    (1711.00489). ``set_epoch(epoch, loader)`` sets ``loader.batch_size`` to ``base * factor^k`` where ``k`` is
    the number of milestones passed (a closed form, so resuming at any epoch is exact). It is a training-loop
    callback: give it to the trainer (``Trainer(callbacks=[schedule])``; the recipe does it for
    ``schedule.name = "batch_size_increase"``) and it sets the train loader's batch size at the start of every
    epoch. ``max_batch_size`` caps the growth."""

    name = "batch_size_schedule"

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

    def on_epoch_start(self, trainer: Any) -> None:
        self.set_epoch(trainer.epoch, trainer.train_loader)


class BatchSizeLR(ConstantLR):
    """The rate left as it is (chainable: ``ConstantLR(factor=1, total_iters=0)``) plus a
    :class:`BatchSizeSchedule`: what the config's ``batch_size_increase`` builds."""

    def __init__(self, optimizer: torch.optim.Optimizer, batch_schedule: BatchSizeSchedule,
                 last_epoch: int = -1) -> None:
        self.batch_schedule = batch_schedule
        super().__init__(optimizer, factor=1.0, total_iters=0, last_epoch=last_epoch)

    def set_epoch(self, epoch: int, loader: Any) -> None:
        self.batch_schedule.set_epoch(epoch, loader)

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "batch_schedule")}


# ---------------------------------------------------------------------------------------- closed-form owners
class ClosedFormLR(LRScheduler):
    """Base class of the closed-form owners: subclasses define ``rate(t, base)``; the rate of each group is
    ``rate(last_epoch, base_lr)`` whatever other schedules did (as torch's ``CosineAnnealingWarmRestarts``,
    ``CyclicLR`` and ``OneCycleLR``)."""

    def rate(self, t: int, base: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        return [self.rate(self.last_epoch, base) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class CosineRestarts(ClosedFormLR):
    """SGDR: cosine annealing restarted after ``T_0``, then ``T_0 * T_mult``, ... steps (Loshchilov & Hutter 2017,
    1608.03983). Same arguments, defaults, errors and rates as torch's ``CosineAnnealingWarmRestarts``; a
    closed-form owner like it. The period is found with integer arithmetic, so ``step(epoch)`` is exact at any
    step (torch's floating-point logarithm can place a restart one period off for large ``epoch``).

    ``step(epoch)`` takes a fractional epoch, as torch documents (``scheduler.step(epoch + i / iters)`` after each
    of an epoch's ``iters`` batches): the position is ``epoch`` itself, ``last_epoch`` becomes ``floor(epoch)``
    and the fraction is kept for the following ``step()`` calls (each adds 1), exactly as torch's twin keeps it in
    ``T_cur``. No deprecation warning (torch's twin gives none for this documented use).

    Args:
        optimizer: the wrapped optimizer.
        T_0 (int): steps until the first restart (>= 1).
        T_mult (int): factor by which the period grows after each restart (>= 1). Default 1.
        eta_min (float): the lowest rate. Default 0.
        last_epoch (int): index of the last step when resuming. Default -1.

    Raises:
        ValueError: ``T_0`` not a positive integer, ``T_mult`` not an integer >= 1, ``eta_min`` not a number,
            ``step(epoch)`` with a negative ``epoch`` (torch's messages).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        if not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}")
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min
        self._frac = 0.0          # the fractional part of the position (step(epoch) with a fraction); not saved
        super().__init__(optimizer, last_epoch)

    def position(self, t: float) -> tuple[float, int]:
        """``(t_cur, T_i)`` at position ``t`` (in steps, a fraction allowed): steps into the current period and
        its length."""
        t = max(t, 0)
        if self.T_mult == 1:
            return t % self.T_0, self.T_0
        start, period = 0, self.T_0
        while t >= start + period:
            start += period
            period *= self.T_mult
        return t - start, period

    def _set_epoch(self, epoch: float) -> None:
        whole = math.floor(epoch)
        self.last_epoch, self._frac = whole, epoch - whole

    def step(self, epoch: float | None = None) -> None:
        """One step (``epoch=None``), or to position ``epoch`` (>= 0, a fraction allowed) as torch's twin."""
        if epoch is None:
            if self.last_epoch < 0:
                self._set_epoch(0)
            else:
                self.last_epoch += 1
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            self._set_epoch(epoch)
        with _torch._enable_get_lr_call(self):
            values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            _torch._update_param_group_val(group, "lr", lr)
        self._last_lr = _torch._param_groups_val_list(self.optimizer, "lr")

    @property
    def T_cur(self) -> float:
        return self.position(self.last_epoch + self._frac)[0]

    @property
    def T_i(self) -> int:
        return self.position(self.last_epoch + self._frac)[1]

    def state_dict(self) -> dict[str, Any]:
        """torch's twin's keys: ``T_cur`` / ``T_i`` are derived from the position (read-only here)."""
        state = {**super().state_dict(), "T_cur": self.T_cur, "T_i": self.T_i}
        state.pop("_frac", None)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Ours or torch's twin's: the position's fraction is read back from ``T_cur``."""
        self.__dict__.update({k: v for k, v in state.items() if k not in ("T_cur", "T_i")})
        t_cur = state.get("T_cur", 0)
        self._frac = float(t_cur - math.floor(t_cur)) if isinstance(t_cur, (int, float)) else 0.0

    def get_lr(self) -> list[float]:
        cur, period = self.position(self.last_epoch + self._frac)
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * cur / period)) / 2
                for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def rate(self, t, base):
        cur, period = self.position(t)
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * cur / period)) / 2


class Cyclic(_torch.CyclicLR):
    """Cyclical learning rates (Smith 2017, 1506.01186) with momentum cycled the other way: torch's
    ``CyclicLR`` itself (same arguments, defaults, per-group lists of ``base_lr`` / ``max_lr`` /
    ``base_momentum`` / ``max_momentum``, ``scale_fn``, ``state_dict``), a closed-form owner like it.

    The rate goes from ``base_lr`` up to ``max_lr`` over ``step_size_up`` steps and back down over
    ``step_size_down`` (default: the same); ``mode`` scales the amplitude: ``triangular`` 1, ``triangular2``
    ``1/2^(cycle)``, ``exp_range`` ``gamma^t``. With ``cycle_momentum`` (default True, as torch) the momentum (or
    Adam's beta1) goes from ``max_momentum`` down to ``base_momentum`` as the rate goes up.

    Raises:
        ValueError: ``mode`` unknown without ``scale_fn``, a list of the wrong length, ``cycle_momentum`` on an
            optimizer without momentum (torch's messages); negative rates or step sizes < 1 (torch accepts them
            and gives negative rates or divides by zero).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float | list[float], max_lr: float | list[float],
                 step_size_up: int = 2000, step_size_down: int | None = None, mode: str = "triangular",
                 gamma: float = 1.0, scale_fn: Callable[[float], float] | None = None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float | list[float] = 0.8,
                 max_momentum: float | list[float] = 0.9, last_epoch: int = -1) -> None:
        for name, value in (("base_lr", base_lr), ("max_lr", max_lr)):
            if any(isinstance(v, (int, float)) and v < 0 for v in _per_group(name, optimizer, value)):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if step_size_up < 1 or (step_size_down is not None and step_size_down < 1):
            raise ValueError(f"step sizes must be >= 1, got step_size_up={step_size_up}, "
                             f"step_size_down={step_size_down}")
        super().__init__(optimizer, base_lr, max_lr, step_size_up, step_size_down, mode, gamma, scale_fn,
                         scale_mode, cycle_momentum, base_momentum, max_momentum, last_epoch)


class OneCycle(ClosedFormLR):
    """The one-cycle policy with momentum cycling (Smith 2018, 1708.07120), a closed-form owner like torch's
    ``OneCycleLR``.

    The rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of ``total_steps``,
    then falls to ``max_lr / (div_factor * final_div_factor)`` at step ``total_steps - 1`` (``anneal``:
    ``"linear"`` as in the paper, or ``"cos"``); ``three_phase`` comes back down to ``max_lr / div_factor``
    symmetrically before the final fall. With ``cycle_momentum`` the momentum (Adam's beta1) goes from
    ``max_momentum`` to ``base_momentum`` and back. Same formula and step positions as ``OneCycleLR``; the
    defaults are the traintricks recipe's (``pct_start=0.25, div_factor=10, final_div_factor=100,
    anneal="linear"``; torch's are 0.3, 25, 1e4, cos: pass them to get ``OneCycleLR``'s rates) and the config's
    ``onecycle`` and ``multicycle`` take these same defaults.

    Args:
        optimizer: the wrapped optimizer.
        max_lr (float | list[float]): the peak rate, one for all groups or one per group.
        total_steps (int): the cycle's length in steps (>= 2).
        pct_start, anneal, div_factor, final_div_factor, three_phase: the shape (above).
        cycle_momentum (bool): cycle momentum / beta1. Default True.
        base_momentum, max_momentum (float | list[float]): its range. Defaults 0.85, 0.95.
        last_epoch (int): index of the last step when resuming. Default -1.

    Raises:
        ValueError: ``total_steps < 2``, ``pct_start`` outside (0, 1), unknown ``anneal``, a list of the wrong
            length, ``cycle_momentum`` on an optimizer without momentum or betas.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float | Sequence[float], total_steps: int,
                 pct_start: float = 0.25, anneal: str = "linear", div_factor: float = 10.0,
                 final_div_factor: float = 100.0, cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85, max_momentum: float | Sequence[float] = 0.95,
                 three_phase: bool = False, last_epoch: int = -1) -> None:
        if not isinstance(total_steps, int) or total_steps < 2:
            raise ValueError(f"total_steps must be an integer >= 2, got {total_steps!r}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
        if anneal not in ("cos", "linear"):
            raise ValueError(f"anneal must be 'cos' or 'linear', got {anneal!r}")
        if div_factor <= 0 or final_div_factor <= 0:
            raise ValueError(f"div_factor and final_div_factor must be > 0, got {div_factor}, {final_div_factor}")
        maxes = _per_group("max_lr", optimizer, list(max_lr) if isinstance(max_lr, (list, tuple)) else max_lr)
        self.total, self.pct, self.anneal, self.three_phase = total_steps, pct_start, anneal, three_phase
        self.div, self.final_div = div_factor, final_div_factor
        self.max_lrs = maxes
        if cycle_momentum and not any(k in optimizer.defaults for k in ("momentum", "betas")):
            raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")
        self.cycle_momentum = cycle_momentum
        self.base_ms = _per_group("base_momentum", optimizer, base_momentum)
        self.max_ms = _per_group("max_momentum", optimizer, max_momentum)
        if last_epoch == -1:
            for g, m in zip(optimizer.param_groups, maxes):
                g["lr"] = m / div_factor
                g["initial_lr"] = m / div_factor
        super().__init__(optimizer, last_epoch)

    def _phases(self, total: int | None = None) -> list[tuple[float, float, float, float, float]]:
        """(end_step, lr_start_factor, lr_end_factor, m_start_pos, m_end_pos); lr factors relative to max_lr,
        momentum positions 1 = max_momentum, 0 = base_momentum, for a cycle of ``total`` steps (default: the
        whole schedule)."""
        total = self.total if total is None else total
        up = float(self.pct * total) - 1
        lo, fin = 1 / self.div, 1 / (self.div * self.final_div)
        if self.three_phase:
            return [(up, lo, 1.0, 1.0, 0.0), (2 * up, 1.0, lo, 0.0, 1.0), (total - 1, lo, fin, 1.0, 1.0)]
        return [(up, lo, 1.0, 1.0, 0.0), (total - 1, 1.0, fin, 0.0, 1.0)]

    def _interp(self, a: float, b: float, frac: float) -> float:
        if self.anneal == "cos":
            return b + (a - b) / 2 * (1 + math.cos(math.pi * frac))
        return a + (b - a) * frac

    def _at(self, t: int, total: int | None = None) -> tuple[float, tuple[float, float, float]]:
        """(rate factor relative to max_lr, (momentum start position, end position, fraction)) at step ``t``."""
        start = 0.0
        phases = self._phases(total)
        for i, (end, a, b, ma, mb) in enumerate(phases):
            if t <= end or i == len(phases) - 1:
                frac = min(1.0, max(0.0, (t - start) / (end - start))) if end > start else 1.0
                return self._interp(a, b, frac), (ma, mb, frac)
            start = end
        raise AssertionError

    def get_lr(self) -> list[float]:
        factor, (ma, mb, frac) = self._at(self.last_epoch)
        if self.cycle_momentum:
            for g, lo, hi in zip(self.optimizer.param_groups, self.base_ms, self.max_ms):
                m = self._interp(hi if ma else lo, hi if mb else lo, frac)
                if "betas" in g:
                    g["betas"] = (m, *g["betas"][1:])
                else:
                    g["momentum"] = m
        return [mx * factor for mx in self.max_lrs]

    def rate(self, t, base):
        return self._at(t)[0] * (base * self.div)


class MultiCycle(OneCycle):
    """Consecutive one-cycles ("restarts" of the one-cycle policy; Smith 2018, 1708.07120, restarted as in SGDR,
    Loshchilov & Hutter 2017, 1608.03983), a closed-form owner. Cycle ``i`` covers ``cycle_steps[i]`` steps and
    peaks at ``peaks[i] * max_lr``; inside it, rate and momentum follow :class:`OneCycle`'s formula for a cycle of
    that length (same keyword arguments and defaults): up from ``peak / div_factor`` over ``pct_start`` of it,
    then down to ``peak / (div_factor * final_div_factor)``. A short first cycle gives a usable model early;
    later cycles continue from it.

    Raises:
        ValueError: a cycle of fewer than 2 steps, or ``peaks`` not one positive factor per cycle.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_lr: float | Sequence[float], cycle_steps: Sequence[int],
                 peaks: Sequence[float] | None = None, **kwargs) -> None:
        steps = [int(n) for n in cycle_steps]
        peaks = [1.0] * len(steps) if not peaks else [float(p) for p in peaks]
        if not steps or any(n < 2 for n in steps):
            raise ValueError(f"every cycle needs >= 2 steps, got {steps}")
        if len(peaks) != len(steps) or any(p <= 0 for p in peaks):
            raise ValueError(f"peaks must be {len(steps)} positive factors (one per cycle), got {peaks}")
        starts = [sum(steps[:i]) for i in range(len(steps))]
        self.cycles = list(zip(starts, steps, peaks))
        super().__init__(optimizer, max_lr=max_lr, total_steps=sum(steps), **kwargs)

    def _at(self, t: int, total: int | None = None) -> tuple[float, tuple[float, float, float]]:
        for i, (start, n, peak) in enumerate(self.cycles):
            if t < start + n or i == len(self.cycles) - 1:
                factor, m = super()._at(t - start, n)
                return factor * peak, m
        raise AssertionError


def sets_rate_each_step(scheduler: LRScheduler) -> bool:
    """Whether ``scheduler`` writes each group's rate from a formula of the step at every ``step()`` (a closed-form
    owner: ours, ``LambdaLR``, ``OneCycleLR``, ``CyclicLR``, ``CosineAnnealingWarmRestarts``), overwriting any change
    made by someone else (another schedule, or an optimizer that learns its rate, like SGD-HD / Adam-HD). The
    chainable ones (``StepLR``, ``ExponentialLR``, ``ConstantLR``, ``Warmup``, ...) scale the current rate instead."""
    from torch.optim import lr_scheduler as tls
    return isinstance(scheduler, (ClosedFormLR, tls.LambdaLR, tls.OneCycleLR, tls.CyclicLR,
                                  tls.CosineAnnealingWarmRestarts))


# -- by name: the config's ``schedule.name`` ------------------------------------------------------------

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
    cap = min(1.0, pct_start * steps / min_warmup_steps)
    if cap < 1.0:
        warn(f"a one-cycle of {steps} steps warms up over {pct_start * steps:.3g} steps, fewer than "
             f"min_warmup_steps={min_warmup_steps}: its peak is scaled by {cap:.3g} (set "
             f"schedule.min_warmup_steps=0 for the uncapped peak)", ScheduleWarning)
    return cap


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
    # OneCycleLR's rate at step t (0-based) is the cycle's at t / (total_steps - 1); the trainer steps the schedule
    # after each of the run's total_steps updates, so update t trains at step t's rate and the last update at the
    # cycle's last rate, initial_lr / final_div_factor. (OneCycle checks pct_start and anneal.)
    n = max(total_steps, 2)           # a 1-step run (OneCycle needs 2): its update at the cycle's start
    cap = _warmup_cap(n, pct_start, min_warmup_steps)
    max_lr = [g["lr"] * cap for g in optimizer.param_groups]
    return OneCycle(optimizer, max_lr=max_lr, total_steps=n, pct_start=pct_start,
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
        warn(f"schedule multicycle: cycle_epochs {list(cycle_epochs)} would make a cycle of fewer than 2 "
             f"steps in this {total_steps}-step run ({steps}); using one one-cycle over the "
             f"{total_steps} steps instead", ScheduleWarning)
        steps, peaks = [max(total_steps, 2)], peaks[:1]      # a 1-step run: its update at the cycle's start
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
        warn(f"schedule cosine: warmup_epochs {warmup_epochs} ({warm} steps) is not shorter than this "
             f"{total_steps}-step run; warming up over {half} steps (half the run) instead", ScheduleWarning)
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
        warn(f"schedule step: step_epochs {step_epochs} ({size} steps) is not shorter than this "
             f"{total_steps}-step run; the rate never decays (a constant rate)", ScheduleWarning)
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
        warn(f"schedule cosine_restarts: first_epochs {first_epochs} ({t0} steps) is longer than this "
             f"{total_steps}-step run; using one cosine period over the {total_steps} steps instead", ScheduleWarning)
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
        warn(f"schedule cyclic: half_cycle_epochs {half_cycle_epochs} ({half} steps) leaves no whole cycle "
             f"in this {total_steps}-step run; using half-cycles of {total_steps // 2} steps (one cycle "
             f"over the run) instead", ScheduleWarning)
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
        warn(f"schedule batch_size_increase: milestones {list(milestones)} all fall at or after the end of "
             f"this {epochs:g}-epoch run; the batch size never grows", ScheduleWarning)
    return BatchSizeLR(optimizer, BatchSizeSchedule(batch_size, list(milestones), factor, max_batch_size or None))


@SCHEDULES.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, factor: float = 0.1,
            patience: int = 10, threshold: float = 1e-4, mode: str = "min", cooldown: int = 0,
            min_lr: float = 0.0) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Divide the rate by 1/factor when the monitored metric (schedule.monitor, default val_loss) stops improving."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                                                      threshold=threshold, cooldown=cooldown, min_lr=min_lr)
