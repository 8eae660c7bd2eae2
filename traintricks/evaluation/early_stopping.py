"""Early stopping (Prechelt 1998, "Early stopping — but when?", in *Neural Networks: Tricks of the Trade*).

``patience``: training stops when the monitored validation quantity has not improved by more than ``min_delta``
for ``patience`` consecutive epochs. Prechelt's three classes of criteria, on the validation error
``E_va(t)`` (the monitored loss, or ``1 - accuracy`` for an accuracy) and the training error ``E_tr(t)``
(``train_loss``) after epoch ``t``:

- **generalization loss** ``GL(t) = 100 (E_va(t) / E_opt(t) - 1)`` with ``E_opt(t) = min_{t' <= t} E_va(t')``;
  ``GL_alpha`` stops after the first epoch with ``GL(t) > alpha``;
- **training progress** over a strip of ``k`` epochs ending at ``t``,
  ``P_k(t) = 1000 (sum_{t'=t-k+1..t} E_tr(t') / (k min_{t'=t-k+1..t} E_tr(t')) - 1)``, and the **progress
  quotient** ``PQ_alpha``: stop at the first strip end with ``GL(t) / P_k(t) > alpha`` (high generalization loss
  is tolerated while training still progresses fast);
- ``UP_s``: stop at the first strip end ``t`` where the validation error increased in ``s`` successive strips,
  ``E_va(t) > E_va(t-k) > ... > E_va(t-sk)``.

Strips are the epochs ``k, 2k, 3k, ...`` (``PQ`` and ``UP`` are only evaluated at strip ends, ``GL`` every epoch).
With ``restore_best`` the weights of the epoch of ``E_opt`` are put back. The state is part of the checkpoint, so
a resumed run stops where an uninterrupted one would.

In a plain loop (no trainer), pass the model to ``update`` and the criterion keeps a copy of the best weights and
puts them back itself when it says stop (:meth:`EarlyStopping.restore` does it at any other time)::

    stopper = EarlyStopping(patience=3)                     # restore_best=True
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        if stopper.update(epoch, {"val_loss": evaluate(model)}, model):
            break                                           # model now holds the best epoch's weights
    else:
        stopper.restore(model)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..callback import Callback
from ..registry import Registry

EARLY_STOPPING = Registry("early-stopping criterion", section="evaluation",
                          plural="early-stopping criteria")


_HIGHER_IS_BETTER = ("acc", "f1", "r2", "precision", "recall", "auc", "exact_match", "iou", "dice", "map")
_LOWER_IS_BETTER = ("loss", "error", "rmse", "mae", "mse", "perplexity", "ece")


def monitor_mode(monitor: str) -> str:
    """``"max"`` or ``"min"`` for a metric named ``monitor`` (e.g. ``val_accuracy``, ``val_micro_f1``, ``val_r2``:
    max; ``val_loss``, ``val_rmse``: min). Raises ``ValueError`` for a name that says neither."""
    name = monitor.lower()
    if any(k in name for k in _LOWER_IS_BETTER):
        return "min"
    if any(k in name for k in _HIGHER_IS_BETTER):
        return "max"
    raise ValueError(f"cannot tell whether {monitor!r} is better higher or lower: pass mode='max' or mode='min'")


class EarlyStopping:
    """Patience-based early stopping on a monitored metric.

    Args:
        patience: epochs without improvement before stopping (>= 1).
        min_delta: smallest change counted as an improvement (>= 0).
        monitor: metric name from the epoch record, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"`` or ``"max"``; by default from the metric's name (:func:`monitor_mode`: ``"max"`` for
            accuracy, F1, R^2, precision, recall, AUC, exact match; ``"min"`` for losses and errors); another
            name raises ``ValueError`` asking for ``mode``.
        restore_best: put back the best epoch's weights when training ends: the trainer does it, or, in a plain
            loop, ``update(..., model)`` does when it returns True (and :meth:`restore` at any time).
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, monitor: str = "val_loss",
                 mode: str | None = None, restore_best: bool = True) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        mode = mode or monitor_mode(monitor)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience, self.min_delta, self.monitor, self.mode = patience, min_delta, monitor, mode
        self.restore_best = restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None    # the best weights (only with a model given)

    def _value(self, record: dict | float) -> float:
        if not isinstance(record, dict):
            return float(record)                    # a plain number: the monitored value itself
        if self.monitor not in record:
            raise KeyError(f"early stopping monitors {self.monitor!r}, which the epoch record lacks "
                           f"(has: {', '.join(sorted(record))})")
        return float(record[self.monitor])

    def _track(self, model: Any, improved: bool, stop: bool) -> bool:
        """Keep a copy of ``model``'s weights when the epoch improved; put the best back on a stop."""
        if model is not None and self.restore_best:
            if improved:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if stop:
                self.restore(model)
        return stop

    def restore(self, model: Any) -> bool:
        """Load the best epoch's weights kept by ``update(..., model)`` into ``model``; False if none were kept."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, record: dict | float, model: Any = None) -> bool:
        """Record ``epoch``'s metrics (the epoch record, or the monitored value as a number); return True when
        training should stop. With ``model`` (and ``restore_best``) keep its weights at every improvement and
        load the best ones back into it when returning True."""
        value = self._value(record)
        better = self.improved(value)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self._track(model, better, self.bad_epochs >= self.patience)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
                f"monitor={self.monitor!r}, mode={self.mode!r}, restore_best={self.restore_best})")


class PrecheltCriterion(EarlyStopping):
    """Base of Prechelt's criteria: keeps ``E_va`` and ``E_tr`` per epoch and the best epoch (``E_opt``)."""

    def __init__(self, monitor: str = "val_loss", strip: int = 5, restore_best: bool = True) -> None:
        super().__init__(patience=1, min_delta=0.0, monitor=monitor, restore_best=restore_best)
        if strip < 1:
            raise ValueError(f"strip must be >= 1, got {strip}")
        self.strip = strip
        self.val_errors: list[float] = []
        self.train_errors: list[float] = []

    def error(self, record: dict | float) -> float:
        v = self._value(record)
        return 1.0 - v if self.mode == "max" else v

    def generalization_loss(self) -> float:
        """``GL(t)`` in percent after the latest epoch."""
        e_opt = min(self.val_errors)
        if e_opt <= 0:
            return 0.0 if self.val_errors[-1] <= 0 else math.inf
        return 100.0 * (self.val_errors[-1] / e_opt - 1.0)

    def training_progress(self) -> float:
        """``P_k(t)`` in per mille over the latest strip of ``k`` epochs."""
        strip = self.train_errors[-self.strip:]
        low = min(strip)
        if low <= 0:
            return 0.0
        return 1000.0 * (sum(strip) / (len(strip) * low) - 1.0)

    def update(self, epoch: int, record: dict | float, model: Any = None) -> bool:
        e_va = self.error(record)
        self.val_errors.append(e_va)
        if self.needs_train:
            if not isinstance(record, dict) or "train_loss" not in record:
                raise KeyError("this criterion needs 'train_loss' in the epoch record")
            self.train_errors.append(float(record["train_loss"]))
        better = e_va < self.best_error()
        if better:
            self.best, self.best_epoch = self._value(record), epoch
        return self._track(model, better, self.should_stop(epoch))

    needs_train = False

    def best_error(self) -> float:
        """``E_opt`` so far (``inf`` before the first epoch: ``best`` starts at -inf/inf; epochs may count from 0)."""
        return 1.0 - self.best if self.mode == "max" else self.best

    def at_strip_end(self, epoch: int) -> bool:
        return epoch % self.strip == 0

    def should_stop(self, epoch: int) -> bool:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {**super().state_dict(), "val_errors": list(self.val_errors), "train_errors": list(self.train_errors)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.val_errors = [float(v) for v in state["val_errors"]]
        self.train_errors = [float(v) for v in state["train_errors"]]


class GeneralizationLoss(PrecheltCriterion):
    """``GL_alpha``: stop after the first epoch whose generalization loss ``GL(t)`` exceeds ``alpha`` percent."""

    def __init__(self, alpha: float = 5.0, monitor: str = "val_loss", restore_best: bool = True) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        super().__init__(monitor=monitor, strip=1, restore_best=restore_best)
        self.alpha = alpha

    def should_stop(self, epoch: int) -> bool:
        return self.generalization_loss() > self.alpha

    def __repr__(self) -> str:
        return f"GeneralizationLoss(alpha={self.alpha}, monitor={self.monitor!r}, restore_best={self.restore_best})"


class ProgressQuotient(PrecheltCriterion):
    """``PQ_alpha``: stop at the first strip end with ``GL(t) / P_k(t) > alpha``."""

    needs_train = True

    def __init__(self, alpha: float = 0.5, strip: int = 5, monitor: str = "val_loss",
                 restore_best: bool = True) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        super().__init__(monitor=monitor, strip=strip, restore_best=restore_best)
        self.alpha = alpha

    def should_stop(self, epoch: int) -> bool:
        if not self.at_strip_end(epoch):
            return False
        gl, p = self.generalization_loss(), self.training_progress()
        if p <= 0:                   # training has stopped progressing: any generalization loss is too much
            return gl > 0
        return gl / p > self.alpha

    def __repr__(self) -> str:
        return (f"ProgressQuotient(alpha={self.alpha}, strip={self.strip}, monitor={self.monitor!r}, "
                f"restore_best={self.restore_best})")


class UpStrips(PrecheltCriterion):
    """``UP_s``: stop at the first strip end after which the validation error rose in ``s`` successive strips."""

    def __init__(self, s: int = 3, strip: int = 5, monitor: str = "val_loss", restore_best: bool = True) -> None:
        if s < 1:
            raise ValueError(f"s must be >= 1, got {s}")
        super().__init__(monitor=monitor, strip=strip, restore_best=restore_best)
        self.s = s

    def should_stop(self, epoch: int) -> bool:
        if not self.at_strip_end(epoch) or epoch < (self.s + 1) * self.strip:
            return False
        ends = [self.val_errors[epoch - 1 - i * self.strip] for i in range(self.s + 1)]  # E_va(t), E_va(t-k), ...
        return all(ends[i] > ends[i + 1] for i in range(self.s))

    def __repr__(self) -> str:
        return (f"UpStrips(s={self.s}, strip={self.strip}, monitor={self.monitor!r}, "
                f"restore_best={self.restore_best})")


EARLY_STOPPING.register("patience", EarlyStopping, summary="Stop after `patience` epochs without a min_delta "
                        "improvement of the monitored metric; restore the best weights.")
EARLY_STOPPING.register("gl", GeneralizationLoss,
                        summary="Prechelt's GL_alpha: stop once the validation error is alpha% above its minimum so far.")
EARLY_STOPPING.register("pq", ProgressQuotient, summary="Prechelt's PQ_alpha: stop when generalization loss / "
                                                        "training progress over a strip exceeds alpha.")
EARLY_STOPPING.register("up", UpStrips, summary="Prechelt's UP_s: stop when the validation error rose in s successive "
                                                "strips of `strip` epochs.")


class EarlyStoppingCallback(Callback):
    """An early-stopping criterion in the training loop: after each epoch's evaluation it is updated with the
    epoch record and asks the trainer to stop (``trainer.stopped_early``); with ``restore_best`` it keeps the
    evaluated model's weights at each improvement (checkpointed as ``best.safetensors``) and puts them back when
    training ends, so the final test evaluation and the saved model are the best epoch's.

    Args:
        criterion: an :class:`EarlyStopping` (or one of Prechelt's criteria).
    """

    name = "early_stopping"

    def __init__(self, criterion: EarlyStopping) -> None:
        self.criterion = criterion
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer, record) -> None:
        before = self.criterion.best_epoch
        if self.criterion.update(trainer.epoch, record):
            trainer.stopped_early = True
        if self.criterion.restore_best and self.criterion.best_epoch != before:
            self.best_state = {k: v.detach().clone() for k, v in trainer.eval_model.state_dict().items()}

    def on_fit_end(self, trainer, summary) -> None:
        if self.criterion.best_epoch:
            summary["best_epoch"] = self.criterion.best_epoch
        if self.criterion.restore_best and self.best_state is not None and self.criterion.best_epoch != trainer.epoch:
            trainer.restore_weights(self.best_state)
            summary["restored_best"] = True

    def state_dict(self):
        return self.criterion.state_dict()

    def load_state_dict(self, state):
        self.criterion.load_state_dict(state)

    def on_save_checkpoint(self, trainer, directory) -> None:
        if self.best_state is not None:
            trainer.save_tensors(self.best_state, Path(directory) / "best.safetensors")

    def on_load_checkpoint(self, trainer, directory) -> None:
        if (Path(directory) / "best.safetensors").is_file():
            self.best_state = trainer.load_tensors(Path(directory) / "best.safetensors")

    def __repr__(self) -> str:
        return f"EarlyStoppingCallback({self.criterion!r})"
