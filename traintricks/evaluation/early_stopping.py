"""Early stopping (Prechelt 1998, "Early stopping — but when?").

Training stops when the monitored validation quantity has not improved by more than
``min_delta`` for ``patience`` consecutive epochs; with ``restore_best`` the weights of the best
epoch are put back. The state (best value, best epoch, bad-epoch count) is part of the
checkpoint, so a resumed run stops where an uninterrupted one would.
"""
from __future__ import annotations

import math

from ..registry import Registry

EARLY_STOPPING = Registry("early-stopping criterion", section="evaluation",
                          plural="early-stopping criteria")


class EarlyStopping:
    """Patience-based early stopping on a monitored metric.

    Args:
        patience: epochs without improvement before stopping (>= 1).
        min_delta: smallest change counted as an improvement (>= 0).
        monitor: metric name from the epoch record, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"`` or ``"max"``; by default ``"max"`` for names containing "acc", else ``"min"``.
        restore_best: put back the best epoch's weights when training ends.
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, monitor: str = "val_loss",
                 mode: str | None = None, restore_best: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        mode = mode or ("max" if "acc" in monitor else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience, self.min_delta, self.monitor, self.mode = patience, min_delta, monitor, mode
        self.restore_best = restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, record: dict) -> bool:
        """Record ``epoch``'s metrics; return True when training should stop."""
        if self.monitor not in record:
            raise KeyError(f"early stopping monitors {self.monitor!r}, which the epoch record lacks "
                           f"(has: {', '.join(sorted(record))})")
        value = float(record[self.monitor])
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
                f"monitor={self.monitor!r}, mode={self.mode!r}, restore_best={self.restore_best})")


@EARLY_STOPPING.register("patience")
def patience(patience: int = 5, min_delta: float = 0.0, monitor: str = "val_loss",
             restore_best: bool = True) -> EarlyStopping:
    """Stop after `patience` epochs without a min_delta improvement of the monitored metric; restore the best weights."""
    return EarlyStopping(patience=patience, min_delta=min_delta, monitor=monitor, restore_best=restore_best)
