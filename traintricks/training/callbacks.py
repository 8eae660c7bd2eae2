"""The engine's built-in callbacks: what the :class:`~traintricks.training.Trainer` used to do by name.

| callback | events | what it does |
|---|---|---|
| :class:`ScheduleStep` | after optimizer step / epoch end | steps a learning-rate schedule per step or per epoch, or with a monitored metric (``ReduceLROnPlateau``) |
| :class:`GradNormRecord` | before the optimizer step | the epoch record's ``grad_norm``/``grad_norm_max`` (global norm before any transform) |
| :class:`GradientTransforms` | before the optimizer step | clipping, noise, ... (:mod:`traintricks.optim.transforms`) on the final gradients |
| :class:`NonFiniteGuard` | after forward, after evaluation | a NaN/Inf loss (training or evaluation) ends the run with :class:`NonFiniteLossError` |
| :class:`FlipTTA` | evaluated outputs | mean of the logits of the image and its mirror |
| :class:`ShiftTTA` | evaluated outputs | adds the image shifted by a pixel up, down, left and right (and their mirrors) to that mean |
| :class:`FoldForEval` | setup, before evaluation | evaluates a copy of the model with its batch norms folded into the preceding layers (``model.fold_for_eval``) |
| :class:`ProgressBar` | steps, epoch end | a tqdm bar and one line per epoch on stderr |
| :class:`CheckpointWriter` | step end, epoch end | atomic checkpoints per epoch and every N steps / T seconds |
| :class:`MetricsLogger` | epoch end | ``metrics.jsonl`` |
| :class:`EpochEndFunction` | epoch end | an old-style ``fn(trainer, record)`` callback |
| :class:`GradNormQuantiles` | before the optimizer step, train epoch end | quantiles of the per-step gradient norm (choosing a clipping threshold) |

The weight EMA (:class:`~traintricks.evaluation.ema.EMACallback`), the weight averages
(:class:`~traintricks.evaluation.averaging.SWA`, :class:`~traintricks.evaluation.averaging.CheckpointAverage`), early stopping
(:class:`~traintricks.evaluation.early_stopping.EarlyStoppingCallback`) and the batch-size schedule
(:class:`~traintricks.optim.schedules.BatchSizeSchedule`) live beside their techniques. :data:`CALLBACKS`
registers those a config can name in its ``callbacks = [...]`` list (``"tta_flip"``, ``{name = "ema", decay =
0.999}``, ``"grad_norm_quantiles"``), each bound once with its summary and its class's defaults.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ..errors import warn
from ..callback import Callback
from ..evaluation.averaging import SWA, CheckpointAverage
from ..data.resize import ProgressiveResizing
from ..evaluation.adversarial import AdversarialTraining
from ..evaluation.ema import EMACallback, ModelEMA
from ..nn import fold_batchnorm
from ..registry import Registry

CALLBACKS = Registry("callback", section="training")


def _ema_callback(cls: type, model, **options) -> EMACallback:
    """The ``ema`` entry's builder: the :class:`ModelEMA` of the run's model, in the loop as an EMACallback."""
    return EMACallback(cls(model, **options))


# options and defaults: ModelEMA's (decay 0.999, warm-up, BN statistics recomputed over 20 batches)
CALLBACKS.register("ema", ModelEMA, build=_ema_callback,
                   summary="Exponential moving average of the weights, evaluated and saved instead of the live "
                           "weights; BN statistics recomputed, averaged or copied (Polyak 1992; 1803.05407).")


# options and defaults: SWA's and CheckpointAverage's (evaluation/averaging.py); the recipe supplies the model
CALLBACKS.register("swa", SWA, summary="Stochastic weight averaging: equal average of the weights from swa_start "
                   "with its own (annealed or cyclic) rate, BN statistics recomputed; evaluated and saved (1803.05407).")
CALLBACKS.register("checkpoint_average", CheckpointAverage,
                   summary="Average of the last k epochs' weights at the end of training (1804.00247).")


# mean, std, data_range: the run's standardization and the raw range of its training split (the recipe's)
CALLBACKS.register("adversarial", AdversarialTraining, supplied=("mean", "std", "data_range"),
                   summary="Adversarial training on PGD / FGSM inputs in an L-inf ball of the raw pixels, and "
                           "robust_accuracy (PGD) in the test metrics (Madry et al. 2018, 1706.06083).")


CALLBACKS.register("progressive_resizing", ProgressiveResizing,
                   summary="Progressive resizing: train the first epochs on smaller images (sizes per epoch ranges), "
                           "the last ones and evaluation at full size (fast.ai DAWNBench).")


class NonFiniteLossError(RuntimeError):
    """The loss (in training or in an evaluation) became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------- schedules
_PER_STEP_TORCH = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


def default_interval(scheduler: Any) -> str:
    """The rule for a scheduler given without ``scheduler_interval`` (docs/architecture.md, "Schedules"):

    - ``ReduceLROnPlateau``: ``"epoch"`` (it is stepped with the monitored metric after evaluation);
    - torch's ``OneCycleLR`` and ``CyclicLR`` (documented as stepped after every batch) and traintricks'
      closed-form schedules (:class:`~traintricks.optim.schedules.ClosedFormLR`: lengths in steps): ``"step"``;
    - any other scheduler (``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``CosineAnnealingLR``, ``LambdaLR``,
      ...): ``"epoch"``, torch's convention for them, with a warning (when the trainer is built) naming the argument.
    The recipe always passes the interval (its schedules are built in optimizer steps)."""
    from ..optim.schedules import ClosedFormLR
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "epoch"
    if isinstance(scheduler, _PER_STEP_TORCH + (ClosedFormLR,)):
        return "step"
    warn(f"Trainer: scheduler {type(scheduler).__name__} given without scheduler_interval is stepped once "
         "per epoch (torch's convention for it); pass scheduler_interval='step' to step it after every "
         "optimizer step", UserWarning)
    return "epoch"


class ScheduleStep(Callback):
    """Step ``scheduler`` after every optimizer step (``interval="step"``) or after every epoch's evaluation
    (``"epoch"``); a metric-driven schedule (``ReduceLROnPlateau``) is stepped per epoch with
    ``record[monitor]`` (default ``"val_loss"``).

    Raises ``ValueError`` for an unknown interval, a plateau schedule stepped per step, or a ``monitor`` given for
    a schedule that takes no metric; ``KeyError`` (naming the record's keys) when the monitored metric is missing."""

    name = "schedule"

    def __init__(self, scheduler: Any, interval: str | None = None, monitor: str | None = None) -> None:
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        interval = default_interval(scheduler) if interval is None else interval
        if interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {interval!r}")
        if plateau and interval != "epoch":
            raise ValueError("scheduler_interval: a ReduceLROnPlateau is stepped with a metric after each "
                             "evaluation: it must be 'epoch'")
        if monitor is not None and not plateau:
            raise ValueError(f"scheduler_monitor: {type(scheduler).__name__} takes no metric (only a "
                             "ReduceLROnPlateau does)")
        self.scheduler, self.interval = scheduler, interval
        self.monitor = (monitor or "val_loss") if plateau else None

    def on_after_optimizer_step(self, trainer) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, trainer, record) -> None:
        if self.interval != "epoch":
            return
        if self.monitor is None:
            self.scheduler.step()
            return
        if self.monitor not in record:
            raise KeyError(f"the schedule monitors {self.monitor!r}, which the epoch record lacks "
                           f"(has: {', '.join(sorted(record))})")
        self.scheduler.step(record[self.monitor])

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        if state is not None:
            self.scheduler.load_state_dict(state)

    def __repr__(self):
        return f"ScheduleStep({type(self.scheduler).__name__}, interval={self.interval!r}, monitor={self.monitor!r})"


# ------------------------------------------------------------------------------------------------- gradients
def global_grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients, float64, on their device (no host read)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params]))).double()


def _params_with_grad(trainer) -> list:
    return [p for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]


class GradNormRecord(Callback):
    """Adds ``grad_norm`` (mean over the epoch's optimizer steps) and ``grad_norm_max`` to the epoch record: the
    global gradient norm before any transform (on the closure path: the step's gradient, read after the step).
    Sums stay on the device; one host read per epoch."""

    name = "grad_norm"

    def __init__(self) -> None:
        self.sum = self.max = None
        self.updates = 0

    def _add(self, params) -> None:
        if not params:
            return
        gn = global_grad_norm(params)
        if self.sum is None:
            self.sum, self.max = torch.zeros_like(gn), torch.zeros_like(gn)
        self.sum += gn
        torch.maximum(self.max, gn, out=self.max)
        self.updates += 1

    def on_epoch_start(self, trainer) -> None:
        if trainer.step_in_epoch == 0:
            self.sum = self.max = None
            self.updates = 0

    def on_before_optimizer_step(self, trainer, params) -> None:
        if not trainer.closure_path:
            self._add(params)

    def on_after_optimizer_step(self, trainer) -> None:
        if trainer.closure_path:
            self._add(_params_with_grad(trainer))

    def on_train_epoch_end(self, trainer, record) -> None:
        if self.updates:                          # (under DDP the gradients are averaged: the same on every rank)
            record["grad_norm"], record["grad_norm_max"] = self.sum.item() / self.updates, self.max.item()

    def state_dict(self):
        return {"sum": self.sum, "max": self.max, "updates": self.updates}

    def load_state_dict(self, state):
        self.sum, self.max, self.updates = state["sum"], state["max"], int(state["updates"])


class GradientTransforms(Callback):
    """Apply ``transforms`` in order to the final gradients, between backward and the optimizer step. Each is
    ``t(params_with_grad)`` (in place); a ``state_dict``/``load_state_dict`` of a transform is checkpointed.

    An optimizer that computes its own gradients from the loss closure (``needs_closure``: Newton, saddle-free
    Newton) gets the transforms as its ``grad_transform`` hook, applied to the gradient it solves for inside
    ``step``; one without that hook is refused with ``ValueError`` at setup."""

    name = "grad_transforms"

    def __init__(self, transforms: Sequence[Callable] = ()) -> None:
        self.transforms = list(transforms)

    def setup(self, trainer) -> None:
        if self.transforms and trainer.closure_path:
            if not hasattr(trainer.optimizer, "grad_transform"):
                raise ValueError(f"grad_transforms cannot be applied with {type(trainer.optimizer).__name__}: it "
                                 "computes its own gradients from the loss closure inside step() and has no "
                                 "grad_transform hook")
            trainer.optimizer.grad_transform = self._apply

    def _apply(self, params) -> None:
        for t in self.transforms:
            t(params)

    def on_before_optimizer_step(self, trainer, params) -> None:
        if trainer.closure_path:          # applied inside the optimizer's step, through its grad_transform hook
            return
        for t in self.transforms:
            t(params)

    def state_dict(self):
        return {"transforms": [t.state_dict() if hasattr(t, "state_dict") else {} for t in self.transforms]}

    def load_state_dict(self, state):
        for t, st in zip(self.transforms, state.get("transforms", [])):
            if hasattr(t, "load_state_dict"):
                t.load_state_dict(st)


# ------------------------------------------------------------------------------------------------ divergence
class NonFiniteGuard(Callback):
    """End the run when a loss is NaN or infinite: in training (each micro-batch's loss, read on the host: one
    synchronization per micro-batch) or in an evaluation (its mean loss), raising :class:`NonFiniteLossError`
    that names the epoch, the step and the last good checkpoint. A forward pass that raises
    :class:`~traintricks.errors.NonFiniteInputError` counts as a NaN loss."""

    name = "nonfinite_guard"

    def _fail(self, trainer, value: float, where: str) -> None:
        last = f"{trainer.last_checkpoint}" if trainer.last_checkpoint else "none was written yet"
        raise NonFiniteLossError(f"loss became {value} {where}; training stopped. Last good checkpoint: {last}. "
                                 "Try a lower learning rate or gradient clipping.")

    def on_after_forward(self, trainer) -> None:
        value = float("nan") if trainer.loss is None else trainer.loss.item()
        if not math.isfinite(value):
            self._fail(trainer, value, f"at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch + 1}")

    def on_evaluate(self, trainer, split, metrics) -> None:
        value = metrics.get("loss", 0.0)
        if not math.isfinite(value):
            self._fail(trainer, value, f"in the {split} evaluation after epoch {trainer.epoch + 1}")


# ------------------------------------------------------------------------------------------------ evaluation
# from_epoch: the recipe passes data.augment_from_epoch (the model is tested on mirrors once it trains on flips)
@CALLBACKS.register("tta_flip", supplied=("from_epoch",),
                    summary="Flip test-time augmentation: evaluate the mean of the logits of the image and its mirror.")
class FlipTTA(Callback):
    """Test-time augmentation: the evaluated prediction is the mean of the logits of the image and of its
    horizontal mirror (4-D inputs only), once ``from_epoch`` epochs are done (a model that has never seen mirror
    images is evaluated without them)."""

    name = "tta_flip"

    def __init__(self, from_epoch: int = 0) -> None:
        self.from_epoch = from_epoch
        self.images: bool | None = None      # whether the evaluated inputs were images (None: none seen yet)

    def on_fit_end(self, trainer, summary) -> None:
        # how many views the final test metrics average (tta_shift, after this callback, overwrites it)
        if trainer.epoch >= self.from_epoch and self.images is not False:
            summary["tta_views"] = 2

    def on_eval_outputs(self, trainer, inputs, outputs):
        self.images = inputs.ndim == 4
        if inputs.ndim == 4 and trainer.epoch >= self.from_epoch:
            return 0.5 * (outputs + trainer.output_fn(trainer.eval_forward(inputs.flip(-1))).float())
        return None



# from_epoch: as tta_flip's (data.augment_from_epoch: the shifted views are the training crop's translations)
@CALLBACKS.register("tta_shift", supplied=("from_epoch",),
                    summary="Multi-crop test-time augmentation: add the image shifted by `shift` pixels up, down, left "
                            "and right (and, with tta_flip, their mirrors) to the evaluated mean; in the evaluation "
                            "after training only unless every_epoch = true.")
class ShiftTTA(Callback):
    """Multi-crop test-time augmentation (evaluation on several crops of each image, as in Krizhevsky et al. 2012,
    "ImageNet classification with deep convolutional neural networks", and Simonyan & Zisserman 2015, 1409.1556;
    here the crops are one-pixel translations): the evaluated prediction is the mean of the logits of ``V`` views,

        p(x) = (1 / V) * sum_v f(T_v x),

    the image itself and the image translated by ``shift`` pixels up, down, left and right, filled with zeros in
    the standardized inputs (the channel mean: the same map as the training's ``crop`` augmentation with
    ``padding >= shift``): ``V = 5``, or ``V = 10`` when a :class:`FlipTTA` comes before it in the callbacks (each
    view and its mirror). 4-D inputs (N, C, H, W) only; other inputs are evaluated unchanged.

    Evaluation costs ``V`` forward passes, so by default (``every_epoch=False``) the views are used only in the
    evaluations after training (``trainer.after_training``) -- the reported final metrics (``summary.json``'s
    ``test_*``, with ``tta_views = V``), which the trainer then recomputes, also when early stopping ended the run,
    and the report's confusion matrix -- while every epoch's validation and test metrics
    (the history, early stopping, the best epoch) are computed as without this callback. With ``every_epoch=True``
    every evaluation uses them. Nothing is added before ``from_epoch`` epochs are done (the recipe passes
    ``data.augment_from_epoch``: a model that never trained on translations is evaluated without them).

    Args:
        shift: translation in pixels (>= 1, and smaller than the image's height and width).
        every_epoch: use the views in every evaluation, not only after training.
        from_epoch: the number of finished epochs from which the views are used.

    Raises:
        ValueError: ``shift < 1``; a :class:`FlipTTA` placed after this callback (its mean would take the shifted
            views as one view); at evaluation, an image not larger than ``shift`` in height or width.
    """

    name = "tta_shift"

    def __init__(self, shift: int = 1, every_epoch: bool = False, from_epoch: int = 0) -> None:
        if isinstance(shift, bool) or not isinstance(shift, int) or shift < 1:
            raise ValueError(f"shift must be an integer >= 1, got {shift!r}")
        self.shift, self.every_epoch, self.from_epoch = shift, every_epoch, from_epoch
        self.images: bool | None = None      # whether the evaluated inputs were images (None: none seen yet)

    def setup(self, trainer) -> None:
        cbs = list(trainer.callbacks)
        me = next(i for i, c in enumerate(cbs) if c is self)
        if any(isinstance(c, FlipTTA) for c in cbs[me + 1:]):
            raise ValueError("tta_shift: put tta_flip before tta_shift in the callbacks (the shifted views are "
                             "added to the image's and its mirror's mean)")

    def on_fit_end(self, trainer, summary) -> None:
        # the evaluations from here on are the final ones (trainer.after_training): have the trainer recompute the
        # test metrics with the views (the last epoch's were computed without them)
        if trainer.epoch >= self.from_epoch and self.images is not False:
            flip = self._flip_before(trainer, self)
            summary["tta_views"] = 10 if flip is not None and trainer.epoch >= flip.from_epoch else 5
            if not self.every_epoch:
                trainer.redo_final_evaluation()

    @staticmethod
    def _flip_before(trainer, me) -> FlipTTA | None:
        """The flip TTA that runs before this callback on the evaluated outputs (their order in the callbacks,
        which is the order the trainer calls them in)."""
        for c in trainer.callbacks:
            if c is me:
                return None
            if isinstance(c, FlipTTA):
                return c
        return None

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four translated copies of ``x`` (N, C, H, W): up, down, left, right by ``shift`` pixels, zero fill."""
        s, (h, w) = self.shift, x.shape[-2:]
        if s >= min(h, w):
            raise ValueError(f"tta_shift: shift {s} is not smaller than the images ({h}x{w}): the views would be "
                             "all fill; set a smaller shift")
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        return [padded[..., s + dy:s + dy + h, s + dx:s + dx + w]
                for dy, dx in ((-s, 0), (s, 0), (0, -s), (0, s))]

    def on_eval_outputs(self, trainer, inputs, outputs):
        self.images = inputs.ndim == 4
        if inputs.ndim != 4 or trainer.epoch < self.from_epoch:
            return None
        if not (self.every_epoch or trainer.after_training):
            return None
        # the mean so far covers the image, and its mirror when flip TTA applied to this evaluation
        flip = self._flip_before(trainer, self)
        mirrored = flip is not None and trainer.epoch >= flip.from_epoch
        total, count = outputs * (2 if mirrored else 1), 2 if mirrored else 1
        for v in self.views(inputs):
            if trainer.memory_format is not None:
                v = v.contiguous(memory_format=trainer.memory_format)
            total = total + trainer.output_fn(trainer.eval_forward(v)).float()
            count += 1
            if mirrored:
                total = total + trainer.output_fn(trainer.eval_forward(v.flip(-1))).float()
                count += 1
        return total / count


def _weights_version(module: torch.nn.Module) -> tuple:
    """A key that changes whenever a parameter or buffer of ``module`` is written in place (an optimizer step, a
    ``load_state_dict``, batch-norm statistics): the tensors' version counters, read without a host sync."""
    return tuple(t._version for t in (*module.parameters(), *module.buffers()))


class _FoldedForward:
    """The evaluated model's forward with its batch norms folded (:func:`~traintricks.nn.fold_batchnorm`): the
    folded copy is rebuilt when the evaluated model (the trained one, or the weight EMA) changed since the last
    fold, so every evaluation sees the current weights."""

    def __init__(self, trainer) -> None:
        self.trainer, self.key, self.folded = trainer, None, None

    def __call__(self, x):
        model = self.trainer.eval_model
        key = (id(model), _weights_version(model))
        if key != self.key:
            was_training = model.training
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")            # "folded nothing" was checked once, in setup
                self.folded = fold_batchnorm(model)
            model.train(was_training)
            self.key = key
        return self.folded(x)


@CALLBACKS.register("fold_for_eval", summary="Evaluate with every batch norm folded into the preceding conv/linear "
                    "layer (exact in eval mode; the trained and saved model keep their norms); the config key "
                    "model.fold_for_eval = true adds it.")
class FoldForEval(Callback):
    """Batch norm folded for evaluation: the validation and test predictions (and flip TTA's) come from a copy
    of the evaluated model in which each batch norm after a conv/linear layer is folded into it
    (``W' = s W``, ``b' = s (b - mu) + beta``, ``s = gamma / sqrt(var + eps)``; Ioffe & Szegedy 2015,
    1502.03167). Exact up to rounding, so the metrics equal the unfolded model's; the trained model, its
    checkpoints and ``model.safetensors`` keep their norms. Raises ``ValueError`` in ``setup`` when the model has
    no batch norm that can be folded (the reasons listed)."""

    name = "fold_for_eval"

    def setup(self, trainer) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, report = fold_batchnorm(copy.deepcopy(trainer.eval_model).eval(), return_report=True)
        if not report.folded:
            why = "; ".join(f"{n}: {r}" for n, r in report.not_folded) or "it has no batch norm"
            raise ValueError(f"fold_for_eval: nothing to fold in {type(trainer.eval_model).__name__} ({why})")
        self._install(trainer)

    def _install(self, trainer) -> None:
        if not isinstance(trainer.eval_forward, _FoldedForward):
            trainer.eval_forward = _FoldedForward(trainer)

    def on_fit_start(self, trainer) -> None:           # after every callback's setup (the EMA sets its own)
        self._install(trainer)

    def on_train_epoch_end(self, trainer, record) -> None:
        self._install(trainer)

    def on_fit_end(self, trainer, summary) -> None:
        self._install(trainer)


# ------------------------------------------------------------------------------------------------ reporting
class ProgressBar(Callback):
    """A tqdm bar over the epoch's micro-batches (on a terminal) and one summary line per epoch on stderr."""

    name = "progress"

    def __init__(self) -> None:
        self.bar = None
        self.count = 0

    def on_epoch_start(self, trainer) -> None:
        loader = trainer.train_loader
        self.bar = tqdm(total=len(loader) if hasattr(loader, "__len__") else None,
                        desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}", leave=False,
                        disable=not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True,
                        initial=trainer.step_in_epoch * trainer.accumulate_steps)
        self.count = 0

    def on_after_forward(self, trainer) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.count += 1
            if self.count % 10 == 1 and not self.bar.disable:
                self.bar.set_postfix(loss=f"{trainer.loss.item():.3f}", lr=f"{trainer.current_lr():.3g}",
                                     refresh=False)

    def on_train_epoch_end(self, trainer, record) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer, exc) -> None:
        self.on_train_epoch_end(trainer, {})

    def on_epoch_end(self, trainer, r) -> None:
        parts = [f"epoch {r['epoch']}/{trainer.epochs}", f"train loss {r['train_loss']:.4f}"
                 + (f" acc {r['train_accuracy']:.4f}" if "train_accuracy" in r else "")]
        if "val_loss" in r:
            parts.append(f"val loss {r['val_loss']:.4f}" + (f" acc {r['val_accuracy']:.4f}"
                                                           if "val_accuracy" in r else ""))
        if "test_accuracy" in r:
            parts.append(f"test acc {r['test_accuracy']:.4f}")
        if "image_size" in r:                    # progressive resizing: the height this epoch trained on
            parts.append(f"{r['image_size']} px")
        parts.append(f"lr {r['lr']:.3g}  {r['epoch_seconds']:.1f}s")
        tqdm.write(" | ".join(parts), file=sys.stderr)


class CheckpointWriter(Callback):
    """Write an atomic checkpoint (:meth:`Trainer.save_checkpoint`) after every epoch, and inside epochs every
    ``every_steps`` optimizer steps and/or every ``every_seconds`` seconds (0: off). Only the main process
    writes. A checkpoint inside an epoch holds the position in it, so :meth:`Trainer.resume` continues at the next
    step with every RNG and callback state as they were: the run ends with the weights of an uninterrupted one."""

    name = "checkpoints"

    def __init__(self, every_steps: int = 0, every_seconds: float = 0.0) -> None:
        if every_steps < 0 or every_seconds < 0:
            raise ValueError(f"checkpoint_every_steps and checkpoint_every_seconds must be >= 0, got "
                             f"{every_steps}, {every_seconds}")
        self.every_steps, self.every_seconds = int(every_steps), float(every_seconds)
        self.last = time.monotonic()

    def on_fit_start(self, trainer) -> None:
        self.last = time.monotonic()

    def on_step_end(self, trainer) -> None:
        due = (self.every_steps and trainer.global_step % self.every_steps == 0) or \
              (self.every_seconds and time.monotonic() - self.last >= self.every_seconds)
        if due and trainer.dist.is_main:
            trainer.save_checkpoint()
            self.last = time.monotonic()

    def on_epoch_end(self, trainer, record) -> None:
        if trainer.dist.is_main:
            trainer.save_checkpoint()
            self.last = time.monotonic()


class MetricsLogger(Callback):
    """Rewrite ``out_dir/metrics.jsonl`` (one JSON record per epoch, atomically) after every epoch (main process)."""

    name = "metrics_log"

    def __init__(self, path) -> None:
        self.path = path

    def on_epoch_end(self, trainer, record) -> None:
        from .checkpoint import atomic_write_text
        if trainer.dist.is_main:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in trainer.history))


class EpochEndFunction(Callback):
    """An old-style callback: ``fn(trainer, record)`` after each epoch's record is complete and saved."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    @property
    def name(self) -> str:
        return f"fn:{getattr(self.fn, '__qualname__', type(self.fn).__name__)}:{id(self.fn)}"

    def on_epoch_end(self, trainer, record) -> None:
        self.fn(trainer, record)


# -------------------------------------------------------------------------- the example of a new technique
@CALLBACKS.register("grad_norm_quantiles", summary="Quantiles of the per-step gradient norm in each epoch's record "
                                                    "(grad_norm_p50, ...), for choosing a clipping threshold.")
class GradNormQuantiles(Callback):
    """Quantiles of the per-step global gradient norm over each epoch, in the record as ``grad_norm_p50``,
    ``grad_norm_p90``, ``grad_norm_p99``...: the distribution to choose a clipping threshold from (run without
    clipping, then clip at a high quantile of the norms; Zhang et al. 2020, arXiv:1905.11881). It reads the
    gradients the optimizer step will use (after the trainer's ``grad_transforms``, which run before the user's
    callbacks). The norms stay on the device during the epoch; one host read at its end.

    Args:
        quantiles: the quantiles in (0, 1), e.g. ``[0.5, 0.9, 0.99]``.
    """

    name = "grad_norm_quantiles"

    def __init__(self, quantiles: list[float] = (0.5, 0.9, 0.99)) -> None:
        quantiles = [float(q) for q in quantiles]
        if not quantiles or not all(0 < q < 1 for q in quantiles):
            raise ValueError(f"quantiles must be in (0, 1), got {quantiles}")
        self.quantiles = quantiles
        self.norms: list[torch.Tensor] = []

    def on_epoch_start(self, trainer) -> None:
        if trainer.step_in_epoch == 0:
            self.norms = []

    def on_before_optimizer_step(self, trainer, params) -> None:
        if params and not trainer.closure_path:
            self.norms.append(global_grad_norm(params))

    def on_after_optimizer_step(self, trainer) -> None:
        if trainer.closure_path:
            params = _params_with_grad(trainer)
            if params:
                self.norms.append(global_grad_norm(params))

    def on_train_epoch_end(self, trainer, record) -> None:
        if self.norms:
            q = torch.quantile(torch.stack(self.norms), torch.tensor(self.quantiles, dtype=torch.float64,
                                                                     device=self.norms[0].device)).tolist()
            for p, v in zip(self.quantiles, q):
                record[f"grad_norm_p{100 * p:g}"] = v

    def state_dict(self):
        return {"norms": torch.stack(self.norms).cpu() if self.norms else torch.zeros(0, dtype=torch.float64)}

    def load_state_dict(self, state):
        self.norms = list(state["norms"].unbind(0))

    def __repr__(self):
        return f"GradNormQuantiles(quantiles={self.quantiles})"
