"""What a run predicts, and how its predictions are scored: a :class:`Task` turns (outputs, targets) batches into
metrics, so the training loop never assumes classification.

A task accumulates sums on the outputs' device during an epoch (:meth:`Task.update`, no host synchronization)
and reads them once at the end (:meth:`Task.compute`). ``primary`` names the metric that selects the best epoch
and ``mode`` says whether higher (``"max"``) or lower (``"min"``) is better; ``metrics`` maps every metric the
task reports to its own mode, and ``fractions`` names those that are fractions in [0, 1] (shown as percentages).

| task | outputs / targets | metrics (primary first) | default loss |
|---|---|---|---|
| ``classification`` | logits ``(N, K, ...)`` / class indices ``(N, ...)`` (or soft labels ``(N, K)``) | ``accuracy`` | ``cross_entropy`` |
| ``regression`` | predictions ``(N,)``, ``(N, 1)`` or ``(N, D)`` / float targets ``(N,)`` or ``(N, D)`` | ``rmse``, ``mae``, ``r2`` | ``l2`` (MSE; ``l1``, ``huber`` also fit) |
| ``multilabel`` | logits ``(N, L)`` / targets ``(N, L)`` in {0, 1} (float, integer or bool) | ``micro_f1``, ``macro_f1``, ``label_accuracy``, ``exact_match`` | ``bce_with_logits`` |

(The loss is recorded by the loop itself, for every task.)

**Regression** (``D`` target dimensions, ``e = prediction - target``), each computed per dimension and then
averaged over the dimensions (scikit-learn's ``multioutput="uniform_average"``)::

    mae  = mean |e|                 rmse = sqrt(mean e^2)
    r2   = 1 - SS_res / SS_tot,     SS_res = sum e^2,   SS_tot = sum (y - mean y)^2

``SS_tot`` is accumulated exactly over the whole dataset from float64 sums of ``y - c`` and ``(y - c)^2`` with
``c`` the first batch's target mean (a shift that keeps ``sum (y-c)^2 - (sum (y-c))^2 / n`` free of cancellation).
**Constant targets** (``SS_tot = 0`` in a dimension) follow scikit-learn's ``r2_score(force_finite=True)``: that
dimension's R^2 is 1.0 when the predictions are exact (``SS_res = 0``) and 0.0 otherwise.

**Multi-label** (``L`` labels; a label is predicted present when ``sigmoid(logit) >= 0.5``, i.e. ``logit >= 0``):
``label_accuracy`` = the fraction of correct (example, label) decisions, i.e. per-label accuracy averaged over
the labels (``1 - hamming_loss``); ``exact_match`` = the fraction of examples whose every label is right (subset
accuracy); ``micro_f1 = 2 TP / (2 TP + FP + FN)`` with the counts summed over labels; ``macro_f1`` = the mean over
labels of each label's F1, a label with no positives and no predicted positives counting 0 (scikit-learn's
``zero_division=0``). :meth:`MultiLabel.per_label` gives each label's precision, recall, F1, accuracy and support.

**An empty state** (nothing added): classification reports accuracy 0.0 (as before); regression and multi-label
report NaN for every metric (there is nothing to score; a 0 would read as a perfect RMSE).

What a run writes (the keys :mod:`traintricks.evaluation.report` and :mod:`~traintricks.evaluation.compare` read):
``metrics.jsonl`` has per epoch ``train_loss``, ``lr``, and for each evaluated split ``val_loss``/``test_loss``
and ``val_<metric>``/``test_<metric>`` for every metric of the task; ``summary.json`` has ``task`` (absent means
classification) and ``test_loss``, ``test_<metric>``.
"""
from __future__ import annotations

import math
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
    metrics: dict[str, str] = {}          # every metric compute() returns -> its mode ("max" or "min")
    fractions: tuple[str, ...] = ()       # metrics that are fractions in [0, 1]
    default_loss = "cross_entropy"        # the loss registry name a run of this task uses unless told otherwise

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


def _add(state: dict[str, Any], key: str, value: torch.Tensor) -> None:
    state[key] = value if state[key] is None else state[key] + value


@TASKS.register("classification")
class Classification(Task):
    """Multi-class classification: logits ``(N, K, ...)``, class indices (any integer dtype) or soft labels;
    ``accuracy`` is the fraction of arg-max predictions equal to the target class."""

    name = "classification"
    primary = "accuracy"
    mode = "max"
    metrics = {"accuracy": "max"}
    fractions = ("accuracy",)
    default_loss = "cross_entropy"

    def new_state(self) -> dict[str, Any]:
        return {"n": 0, "correct": None}

    def update(self, state, outputs, targets):
        if targets.is_floating_point() and targets.shape != outputs.shape:     # a shape check: no host read
            raise ValueError(f"classification metrics need class indices or soft labels shaped like the outputs "
                             f"{tuple(outputs.shape)}; got float targets {tuple(targets.shape)}: for a regression "
                             f"pass task='regression' (or 'multilabel' for 0/1 label vectors)")
        c = correct_count(outputs, targets)
        state["correct"] = c if state["correct"] is None else state["correct"] + c
        state["n"] += int(targets.shape[0])

    def compute(self, state):
        if state["correct"] is None or state["n"] == 0:
            return {"accuracy": 0.0}
        return {"accuracy": state["correct"].item() / state["n"]}


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64     # MPS has no float64


@TASKS.register("regression")
class Regression(Task):
    """Regression: predictions ``(N,)``/``(N, 1)``/``(N, D)`` against float targets ``(N,)`` or ``(N, D)``; metrics
    ``mae``, ``rmse`` (primary, lower is better) and ``r2`` per target dimension, averaged (see the module
    docstring for the formulas and the constant-target rule). Raises ``ValueError`` when the shapes do not match."""

    name = "regression"
    primary = "rmse"
    mode = "min"
    metrics = {"rmse": "min", "mae": "min", "r2": "max"}
    fractions = ()
    default_loss = "l2"

    @staticmethod
    def pairs(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction, target)`` as ``(N, D)`` tensors (a ``(N, 1)`` output against ``(N,)`` targets is one
        dimension)."""
        p, y = outputs.detach(), targets.detach()
        if p.ndim == 2 and p.shape[1] == 1 and y.ndim == 1:
            p = p[:, 0]
        if p.ndim == 1:
            p = p[:, None]
        if y.ndim == 1:
            y = y[:, None]
        if p.ndim != 2 or p.shape != y.shape:
            raise ValueError(f"regression: predictions of shape {tuple(outputs.shape)} do not match targets of "
                             f"shape {tuple(targets.shape)} (expected (N,), (N, 1) or (N, D) for both)")
        return p, y

    def new_state(self) -> dict[str, Any]:
        return {"n": 0, "shift": None, "abs": None, "sq": None, "sy": None, "syy": None}

    def update(self, state, outputs, targets):
        p, y = self.pairs(outputs, targets)
        dt = _acc_dtype(p)
        p, y = p.to(dt), y.to(dt)
        if state["shift"] is None:
            state["shift"] = y.mean(dim=0)          # on device; only conditions the sums below
        e, yc = p - y, y - state["shift"]
        _add(state, "abs", e.abs().sum(dim=0))
        _add(state, "sq", (e * e).sum(dim=0))
        _add(state, "sy", yc.sum(dim=0))
        _add(state, "syy", (yc * yc).sum(dim=0))
        state["n"] += int(y.shape[0])

    def compute(self, state):
        n = state["n"]
        if n == 0 or state["abs"] is None:
            return {k: math.nan for k in self.metrics}
        sums = torch.stack([state["abs"], state["sq"], state["sy"], state["syy"]]).cpu().tolist()   # one read
        out_mae, out_rmse, out_r2 = [], [], []
        for a, sq, sy, syy in zip(*sums):
            ss_tot = max(syy - sy * sy / n, 0.0)
            out_mae.append(a / n)
            out_rmse.append(math.sqrt(sq / n))
            if ss_tot > 0:
                out_r2.append(1.0 - sq / ss_tot)
            else:                                   # constant targets: scikit-learn's force_finite rule
                out_r2.append(1.0 if sq == 0 else 0.0)
        d = len(out_mae)
        return {"rmse": sum(out_rmse) / d, "mae": sum(out_mae) / d, "r2": sum(out_r2) / d}


@TASKS.register("multilabel")
class MultiLabel(Task):
    """Multi-label classification: logits ``(N, L)``, targets ``(N, L)`` in {0, 1} (any dtype); a label is present
    when its logit is >= 0 (probability >= 0.5). Metrics ``micro_f1`` (primary), ``macro_f1``, ``label_accuracy``,
    ``exact_match`` (see the module docstring); :meth:`per_label` for each label. Raises ``ValueError`` when the
    shapes differ or are not 2-d."""

    name = "multilabel"
    primary = "micro_f1"
    mode = "max"
    metrics = {"micro_f1": "max", "macro_f1": "max", "label_accuracy": "max", "exact_match": "max"}
    fractions = ("micro_f1", "macro_f1", "label_accuracy", "exact_match")
    default_loss = "bce_with_logits"

    def new_state(self) -> dict[str, Any]:
        return {"n": 0, "tp": None, "fp": None, "fn": None, "correct": None, "exact": None}

    def update(self, state, outputs, targets):
        if outputs.ndim != 2 or outputs.shape != targets.shape:
            raise ValueError(f"multilabel: expected logits (N, L) and targets of the same shape, got "
                             f"{tuple(outputs.shape)} and {tuple(targets.shape)}")
        pred = outputs.detach() >= 0
        true = targets.detach() > 0.5 if targets.is_floating_point() else targets.detach() != 0
        _add(state, "tp", (pred & true).sum(dim=0))
        _add(state, "fp", (pred & ~true).sum(dim=0))
        _add(state, "fn", (~pred & true).sum(dim=0))
        right = pred == true
        _add(state, "correct", right.sum(dim=0))
        _add(state, "exact", right.all(dim=1).sum())
        state["n"] += int(targets.shape[0])

    def _counts(self, state) -> tuple[list[int], list[int], list[int], list[int], int]:
        exact = state["exact"].reshape(1).expand_as(state["tp"])
        tp, fp, fn, correct, ex = torch.stack([state["tp"], state["fp"], state["fn"], state["correct"],
                                               exact]).cpu().tolist()          # one read
        return tp, fp, fn, correct, ex[0]

    def compute(self, state):
        n = state["n"]
        if n == 0 or state["tp"] is None:
            return {k: math.nan for k in self.metrics}
        tp, fp, fn, correct, exact = self._counts(state)
        f1 = [2 * a / (2 * a + b + c) if 2 * a + b + c else 0.0 for a, b, c in zip(tp, fp, fn)]
        den = 2 * sum(tp) + sum(fp) + sum(fn)
        return {"micro_f1": 2 * sum(tp) / den if den else 0.0, "macro_f1": sum(f1) / len(f1),
                "label_accuracy": sum(correct) / (n * len(tp)), "exact_match": exact / n}

    def per_label(self, state) -> dict[str, list[float]]:
        """Per label: ``precision``, ``recall``, ``f1`` (0 where undefined), ``accuracy`` and ``support`` (the
        number of examples with the label)."""
        if state["n"] == 0 or state["tp"] is None:
            return {k: [] for k in ("precision", "recall", "f1", "accuracy", "support")}
        tp, fp, fn, correct, _ = self._counts(state)
        n = state["n"]
        return {"precision": [a / (a + b) if a + b else 0.0 for a, b in zip(tp, fp)],
                "recall": [a / (a + c) if a + c else 0.0 for a, c in zip(tp, fn)],
                "f1": [2 * a / (2 * a + b + c) if 2 * a + b + c else 0.0 for a, b, c in zip(tp, fp, fn)],
                "accuracy": [c / n for c in correct], "support": [a + c for a, c in zip(tp, fn)]}


def get_task(task: str | Task | None) -> Task:
    """A :class:`Task` from its registered name (``None``: classification) or as given."""
    if task is None:
        return Classification()
    if isinstance(task, Task):
        return task
    return TASKS.get(task)()


def resolve_task(configured: str, data: Any = None) -> str:
    """The task name of a run: ``configured`` (the config's ``task`` key) unless it is ``"auto"``, then the
    dataset's (``data.task``; classification when the data does not say)."""
    if configured != "auto":
        TASKS.get(configured)                       # KeyError naming the choices
        return configured
    return getattr(data, "task", None) or "classification"


def default_loss(task: str | Task) -> str:
    """The loss registry name a run of ``task`` uses by default: ``cross_entropy``, ``l2`` (MSE) or
    ``bce_with_logits``."""
    return get_task(task).default_loss


# losses that fit each non-classification task (any loss fits classification, as today)
_TASK_LOSSES = {"regression": ("l1", "l2", "huber"), "multilabel": ("bce_with_logits",)}


def losses_for_task(task: str | Task) -> tuple[str, ...] | None:
    """The loss names that fit ``task`` (``None``: any loss, classification)."""
    return _TASK_LOSSES.get(get_task(task).name)


def loss_for_task(task: str | Task, loss_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``loss`` config table a run of ``task`` uses: unchanged for classification or when its ``name`` fits
    the task; the default recipe's ``cross_entropy`` (which fits no other task) becomes the task's default loss,
    its options dropped and ``penalties`` kept. Raises ``ValueError`` naming ``loss.name`` for another loss."""
    t = get_task(task)
    fits = _TASK_LOSSES.get(t.name)
    name = loss_cfg.get("name")
    if fits is None or name in fits:
        return loss_cfg
    if name == "cross_entropy":
        out = {"name": t.default_loss}
        if "penalties" in loss_cfg:
            out["penalties"] = loss_cfg["penalties"]
        return out
    raise ValueError(f"loss.name: {name!r} does not fit task {t.name!r}; choose one of: {', '.join(fits)}")
