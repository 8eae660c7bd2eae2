"""What a run predicts, and how its predictions are scored: a :class:`Task` turns (outputs, targets) batches into
metrics, so the training loop never assumes classification.

A task accumulates sums on the outputs' device during an epoch (:meth:`Task.update`, no host synchronization)
and reads them once at the end (:meth:`Task.compute`). ``primary`` names the metric that selects the best epoch
and ``mode`` says whether higher (``"max"``) or lower (``"min"``) is better.

| task | targets | metrics |
|---|---|---|
| ``classification`` | class indices ``(N,)`` (or soft labels ``(N, K)``) for logits ``(N, K)`` | ``accuracy`` |

(The loss is recorded by the loop itself, for every task.)
"""
from __future__ import annotations

from typing import Any

import torch

from ..registry import Registry
from .metrics import correct_count

TASKS = Registry("task", section="evaluation")


class Task:
    """Base class: subclasses define ``update`` and ``compute``; ``primary``/``mode`` name the metric that
    selects the best epoch (``"max"``: higher is better)."""

    name = "task"
    primary = "loss"
    mode = "min"

    def new_state(self) -> dict[str, Any]:
        """A fresh accumulator for one pass over a dataset."""
        return {"n": 0}

    def update(self, state: dict[str, Any], outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch's ``outputs`` (the model's, float) and ``targets`` to ``state`` (tensors stay on device)."""
        state["n"] += int(targets.shape[0])

    def compute(self, state: dict[str, Any]) -> dict[str, float]:
        """The metrics of everything added to ``state`` (one host read)."""
        return {}

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` is better than ``b`` for :attr:`primary`."""
        return a > b if self.mode == "max" else a < b


@TASKS.register("classification")
class Classification(Task):
    """Multi-class classification: logits ``(N, K, ...)``, class indices (any integer dtype) or soft labels;
    ``accuracy`` is the fraction of arg-max predictions equal to the target class."""

    name = "classification"
    primary = "accuracy"
    mode = "max"

    def new_state(self) -> dict[str, Any]:
        return {"n": 0, "correct": None}

    def update(self, state, outputs, targets):
        c = correct_count(outputs, targets)
        state["correct"] = c if state["correct"] is None else state["correct"] + c
        state["n"] += int(targets.shape[0])

    def compute(self, state):
        if state["correct"] is None or state["n"] == 0:
            return {"accuracy": 0.0}
        return {"accuracy": state["correct"].item() / state["n"]}


def get_task(task: str | Task | None) -> Task:
    """A :class:`Task` from its registered name (``None``: classification) or as given."""
    if task is None:
        return Classification()
    if isinstance(task, Task):
        return task
    return TASKS.get(task)()
