"""Learning-rate schedules by name, stepped once per optimizer step.

One-cycle (Smith 2018, arXiv:1708.07120): the rate rises from ``lr/div_factor`` to ``lr`` over the
first ``pct_start`` of training, then falls to ``lr/(div_factor*final_div_factor)``, while
momentum cycles the other way. Cosine (Loshchilov & Hutter 2017, arXiv:1608.03983) with linear
warm-up (Goyal et al. 2017, arXiv:1706.02677): ``lr_t = lr * t/T_w`` for ``t < T_w``, then
``lr/2 * (1 + cos(pi * (t - T_w)/(T - T_w)))``.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, StepLR

from ..registry import Registry

SCHEDULES = Registry("schedule", section="weight update")


@SCHEDULES.register("constant")
def constant(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> LRScheduler:
    """Constant learning rate."""
    return LambdaLR(optimizer, lambda t: 1.0)


@SCHEDULES.register("onecycle")
def onecycle(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
             pct_start: float = 0.25, div_factor: float = 10.0, final_div_factor: float = 100.0,
             anneal: str = "linear", cycle_momentum: bool = True) -> LRScheduler:
    """One-cycle policy: rate up then down, momentum down then up (Smith 2018, 1708.07120)."""
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
    if anneal not in ("linear", "cos"):
        raise ValueError(f"anneal must be 'linear' or 'cos', got {anneal!r}")
    has_momentum = "momentum" in optimizer.defaults or "betas" in optimizer.defaults
    max_lr = [g["lr"] for g in optimizer.param_groups]
    # OneCycleLR ends its cycle at step total_steps - 1; the trainer steps the schedule after every one
    # of the total_steps updates, so one extra step makes the last update's rate the cycle's last.
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps + 1, pct_start=pct_start,
                      div_factor=div_factor, final_div_factor=final_div_factor,
                      anneal_strategy=anneal, cycle_momentum=cycle_momentum and has_momentum)


@SCHEDULES.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
           warmup_epochs: float = 0.0, min_factor: float = 0.0) -> LRScheduler:
    """Linear warm-up (1706.02677) then cosine decay to lr*min_factor (1608.03983)."""
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    warm = int(round(warmup_epochs * steps_per_epoch))
    if warm >= total_steps:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must be shorter than training")

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        frac = min(1.0, (t - warm) / max(1, total_steps - warm))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * frac))

    return LambdaLR(optimizer, factor)


@SCHEDULES.register("step")
def step(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
         step_epochs: int = 10, gamma: float = 0.1) -> LRScheduler:
    """Step decay: multiply the rate by gamma every step_epochs epochs."""
    if step_epochs < 1:
        raise ValueError(f"step_epochs must be >= 1, got {step_epochs}")
    return StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma)
