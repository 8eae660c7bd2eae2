"""The learning-rate range test (Smith 2017, arXiv:1506.01186, sec. 3.3; the "LR finder").

Train for ``num_steps`` mini-batches while the rate grows exponentially from ``start_lr`` to ``end_lr``,
``lr_i = start * (end / start)^(i / (n - 1))``, recording the loss, smoothed by an exponential moving average
with bias correction (``beta``). Stop early once the smoothed loss exceeds ``diverge`` times its minimum.
The suggested rate is where the smoothed loss falls fastest against ``log(lr)`` (the steepest negative
slope over a tenth of the range, the first tenth of the steps left out), before the minimum. Model and optimizer are restored afterwards: the test changes nothing.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn


def lr_find(model: nn.Module, loader: Iterable, loss_fn: Callable, optimizer: torch.optim.Optimizer,
            start_lr: float = 1e-6, end_lr: float = 10.0, num_steps: int = 100, beta: float = 0.98,
            diverge: float = 4.0, forward: Callable | None = None) -> dict[str, Any]:
    """Run the range test; returns ``{"lr": [...], "loss": [...], "smoothed": [...], "suggestion": float}``."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if num_steps < 3:
        raise ValueError(f"num_steps must be >= 3, got {num_steps}")
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    forward = forward or model
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    model.train()
    try:
        batches = iter(loader)
        for i in range(num_steps):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            lr = start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            loss.backward()
            optimizer.step()
            avg = beta * avg + (1 - beta) * value
            s = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(s)
            best = min(best, s)
            if s > diverge * best:
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
    return {"lr": lrs, "loss": losses, "smoothed": smoothed, "suggestion": suggest(lrs, smoothed)}


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate of steepest descent of the smoothed loss against log(lr), up to its minimum.

    The slope is taken over a window of ``2k`` steps (``k = max(1, n // 20)``: about a tenth of the range) and
    the first ``max(2, n // 10)`` steps are left out: there the moving average has seen only a few noisy losses
    (fastai skips the start of the curve the same way), and a chance dip at a rate far too small to train would
    otherwise be suggested. ``None`` for fewer than 3 points; ``lr_min / 10`` when the loss never falls."""
    n = len(lrs)
    if n < 3:
        return None
    stop = min(range(n), key=smoothed.__getitem__)
    logs = [math.log(v) for v in lrs]
    k = max(1, n // 20)
    skip = max(1, n // 10) if n >= 20 else 1
    best_i, best_slope = None, 0.0
    for i in range(skip, max(stop, skip + 1)):
        lo, hi = max(0, i - k), min(n - 1, i + k)
        if hi == lo:
            continue
        slope = (smoothed[hi] - smoothed[lo]) / (logs[hi] - logs[lo])
        if slope < best_slope:
            best_i, best_slope = i, slope
    return lrs[best_i] if best_i is not None else lrs[stop] / 10


def plot_lr_find(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lr"], result["loss"], color="0.7", lw=1, label="loss")
    ax.plot(result["lr"], result["smoothed"], lw=2, label="smoothed")
    if result["suggestion"]:
        ax.axvline(result["suggestion"], color="crimson", ls="--", label=f"suggested {result['suggestion']:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    lo = min(result["smoothed"]) if result["smoothed"] else 0
    ax.set_ylim(lo * 0.9, min(max(result["loss"]), (result["smoothed"][0] if result["smoothed"] else 1) * 2.5))
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
