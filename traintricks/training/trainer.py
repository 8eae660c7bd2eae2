"""The training loop: a few primitives (forward, loss, backward, gradient accumulation, optimizer step,
evaluation, checkpoint state) and :class:`~traintricks.callback.Callback` events around them.

:class:`Trainer` knows no technique by name: the weight EMA, early stopping, gradient transforms and the
gradient-norm record, flip TTA, the NaN/Inf guard, the batch-size schedule, the learning-rate schedule, metric
logging, checkpoint writing and the progress display are callbacks (:mod:`traintricks.training.callbacks` and
beside their techniques). The old keyword arguments (``ema=``, ``early_stopping=``, ``tta_flip=``, ...) build
those callbacks. Checkpoints (per epoch, every N steps or T seconds) hold the position inside the epoch, every
RNG and every callback's state: a run killed at any step and resumed ends with the weights of an uninterrupted
one. See ``docs/architecture.md`` for one step's path through the events.
"""
from __future__ import annotations

import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..callback import EVENTS, Callback, overrides
from ..errors import NonFiniteInputError
from ..evaluation.early_stopping import EarlyStopping, EarlyStoppingCallback
from ..evaluation.ema import EMACallback
from ..evaluation.tasks import Task, get_task
from ..parallel.ddp import dist_info
from . import checkpoint as ckpt
from .callbacks import (CheckpointWriter, EpochEndFunction, FlipTTA, GradientTransforms, GradNormRecord,
                        MetricsLogger, NonFiniteGuard, NonFiniteLossError, ProgressBar, ScheduleStep)

GradTransform = Callable[[Sequence[torch.Tensor]], None]
STATE_FORMAT = 2

__all__ = ["Trainer", "NonFiniteLossError", "optimizer_steps", "unpack_batch", "unpack_outputs"]


def optimizer_steps(micro_batches: int, accumulate_steps: int, drop_tail: bool = False) -> int:
    """Optimizer steps in an epoch of ``micro_batches`` with ``accumulate_steps`` micro-batches per step: the
    incomplete tail group counts as one step unless ``drop_tail``. Schedules take their total step count from it."""
    if micro_batches < 0 or accumulate_steps < 1:
        raise ValueError(f"need micro_batches >= 0 and accumulate_steps >= 1, got {micro_batches}, {accumulate_steps}")
    return micro_batches // accumulate_steps if drop_tail else -(-micro_batches // accumulate_steps)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` picks bf16 autocast where the hardware runs it fast (CPU with AVX-512 BF16, or CUDA
    with bf16 support), else fp16 with dynamic loss scaling on CUDA, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------------------- batches and outputs
def unpack_batch(batch: Any, keys: tuple[str, str] = ("input", "target")) -> tuple[Any, Any, dict[str, Any]]:
    """The default ``batch_fn``: a batch as ``(inputs, targets, extras)``.

    - ``(x, y)`` -> ``(x, y, {})``; ``(x, y, e1, e2, ...)`` -> ``(x, y, {"extras": (e1, e2, ...)})``;
    - a dict -> ``(batch[keys[0]], batch[keys[1]], the other entries)``.

    Raises ``TypeError``/``KeyError`` naming what the batch lacks."""
    if isinstance(batch, dict):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"a dict batch needs the keys {list(keys)} (Trainer(batch_keys=...)); it has "
                           f"{sorted(batch)}")
        return batch[keys[0]], batch[keys[1]], {k: v for k, v in batch.items() if k not in keys}
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1], ({"extras": tuple(batch[2:])} if len(batch) > 2 else {})
    raise TypeError(f"a batch must be (inputs, targets[, extras...]) or a dict, got {type(batch).__name__}; "
                    "give Trainer(batch_fn=...) to unpack other forms")


def unpack_outputs(outputs: Any, key: str = "logits") -> torch.Tensor:
    """The default ``output_fn``: the prediction in a model's outputs (used by metrics, TTA and, by default, the
    loss): a tensor as it is, the first element of a tuple/list (auxiliary heads after it), ``outputs[key]`` of a
    dict."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)) and outputs:
        return outputs[0]
    if isinstance(outputs, dict):
        if key not in outputs:
            raise KeyError(f"the model returned a dict without {key!r} (has {sorted(outputs)}); give "
                           "Trainer(output_key=...) or output_fn=...")
        return outputs[key]
    raise TypeError(f"cannot find the prediction in model outputs of type {type(outputs).__name__}; give "
                    "Trainer(output_fn=...)")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _numel0(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _numel0(next(iter(x.values())))
    if isinstance(x, (list, tuple)):
        return _numel0(x[0]) if x and isinstance(x[0], (torch.Tensor, dict, list, tuple)) else len(x)
    return len(x)


# ------------------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """Every global RNG's state (torch CPU and CUDA, Python's ``random``, NumPy's when NumPy is loaded), in
    ``weights_only``-loadable values."""
    s: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        s["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    if s.get("numpy") is not None:
        import numpy as np
        name, keys, pos, has_gauss, cached = s["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader``; evaluate on ``val_loader``/``test_loader``.

    A plain loop needs only ``Trainer(model, optimizer, loss_fn, train_loader).fit()``: any iterable of batches
    (a ``torch.utils.data.DataLoader`` too), any ``nn.Module``, any loss.

    Args:
        model, optimizer, loss_fn: the usual PyTorch objects; by default ``loss_fn(prediction, targets)`` returns
            a scalar (a per-example mean).
        train_loader, val_loader, test_loader: iterables of batches; ``set_epoch(epoch)`` is called when they have
            it. Exact mid-epoch resume needs a loader whose order is a function of its epoch and of the global
            RNG state when it is iterated (``TensorLoader``, ``DataLoader``): the batches before the resume point
            are drawn again and discarded.
        scheduler: a learning-rate scheduler (or ``None``), stepped by a
            :class:`~traintricks.training.callbacks.ScheduleStep` callback.
        scheduler_interval: ``"step"`` (after every optimizer step) or ``"epoch"`` (after each epoch's evaluation);
            ``None``: :func:`~traintricks.training.callbacks.default_interval` (``ReduceLROnPlateau``, torch's
            ``StepLR``, ``LambdaLR``... per epoch as torch documents them; ``OneCycleLR``, ``CyclicLR`` and
            traintricks' closed-form schedules per step).
        scheduler_monitor: the record key a ``ReduceLROnPlateau`` is stepped with (default ``"val_loss"``).
        epochs: number of epochs to train.
        callbacks: :class:`~traintricks.callback.Callback` objects (run in this order, after the built-in
            technique callbacks and before the checkpoint writer), or old-style functions ``fn(trainer, record)``
            called after each epoch's record is complete and saved.
        task: a :class:`~traintricks.evaluation.tasks.Task` or its name (default ``"classification"``): the
            metrics of the records (``train_<m>``, ``val_<m>``, ``test_<m>``) and the best epoch's metric.
        batch_fn: ``batch -> (inputs, targets, extras)`` (default :func:`unpack_batch` with ``batch_keys``).
        output_fn: ``model outputs -> prediction`` (default :func:`unpack_outputs` with ``output_key``).
        loss_inputs: ``"prediction"``: ``loss_fn(prediction, targets)``; ``"all"``: ``loss_fn(outputs, targets,
            **extras)`` with the model's raw outputs (auxiliary heads, distillation inputs in the batch).
        accumulate_steps: ``k``, micro-batches per optimizer step (gradient accumulation, a loop primitive); the
            loader yields micro-batches, the schedule is stepped once per optimizer step. Normalization: each
            micro-batch's loss is weighted by its share of the examples of its group, ``n_i / sum(n_j)``, before
            backward, so the update is the one of the group's micro-batches as one batch (``loss_fn`` a
            per-example mean): k micro-batches of ``B`` give the update of one batch of ``k*B``, and when the
            epoch's micro-batches do not divide into groups of k, the last (tail) group of ``t < k`` micro-batches
            makes one more update equal to that of one batch of the examples it has (10 examples in micro-batches
            of 2 with k=2: 3 updates, the last over 2 examples). ``k=1`` is exactly ``loss.backward()``, unscaled.
            The number of updates per epoch is :func:`optimizer_steps` of the loader's length.
        drop_tail: skip an incomplete last group (not computed, not counted in ``train_loss``), the analogue of
            ``drop_last`` for the accumulated batch.
        out_dir: where ``metrics.jsonl`` and ``checkpoints/`` go (``None``: nothing written).
        checkpoint_every_steps, checkpoint_every_seconds: also checkpoint inside epochs (0: only per epoch;
            nothing is written without ``out_dir``).
        keep_checkpoints: how many recent checkpoints to keep.
        device: ``"cpu"``, ``"cuda"``...; precision: ``"fp32"``, ``"bf16"`` (autocast), ``"fp16"`` (autocast with
            dynamic loss scaling, below) or ``"auto"`` (:func:`resolve_precision`).
        channels_last: move model and 4-D batches to channels-last memory format.
        compile: run the model through ``torch.compile``.
        test_every_epoch: evaluate on ``test_loader`` after every epoch (else only at the end).
        nan_guard: end the run on a NaN/Inf loss in training or evaluation
            (:class:`~traintricks.training.callbacks.NonFiniteGuard`).
        progress: show a progress bar and a line per epoch.

    The old technique arguments build callbacks: ``ema`` (a :class:`~traintricks.evaluation.ModelEMA`) ->
    :class:`~traintricks.evaluation.ema.EMACallback`; ``early_stopping`` ->
    :class:`~traintricks.evaluation.early_stopping.EarlyStoppingCallback`; ``grad_transforms`` ->
    :class:`~traintricks.training.callbacks.GradientTransforms`; ``tta_flip``/``tta_from_epoch`` ->
    :class:`~traintricks.training.callbacks.FlipTTA`.

    **fp16** (Micikevicius et al. 2017, arXiv:1710.03740): forward passes and losses under float16 autocast, the
    loss multiplied by a scale ``S`` before backward and the gradients divided by ``S`` before
    ``on_before_optimizer_step`` (``torch.amp.GradScaler.unscale_``: clipping, LARS, noise and the gradient-norm
    record see the true gradients); a step whose gradients hold an Inf/NaN is skipped and ``S`` halved, ``S``
    doubled after 2000 good steps (``GradScaler``'s defaults). The epoch record counts ``skipped_steps`` and ends
    with the ``loss_scale``; the scaler's state is checkpointed. On CUDA and on CPU (torch >= 2.3 has float16
    autocast and a ``GradScaler`` for both); refused with a closure optimizer (the scaler cannot unscale
    gradients computed inside ``step``).

    Raises ``ValueError`` for ``epochs < 1``, ``accumulate_steps < 1``, an unknown precision, fp16 with a closure
    optimizer, gradient transforms with a closure optimizer lacking a ``grad_transform`` hook, or two callbacks
    with one name.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 train_loader: Iterable, val_loader: Iterable | None = None, test_loader: Iterable | None = None,
                 *, scheduler: Any = None, epochs: int = 10, early_stopping: EarlyStopping | None = None,
                 grad_transforms: Sequence[GradTransform] = (), out_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False, tta_flip: bool = False, test_every_epoch: bool = True,
                 callbacks: Sequence[Callback | Callable] = (), progress: bool = True, keep_checkpoints: int = 2,
                 accumulate_steps: int = 1, ema: Any = None, tta_from_epoch: int = 0,
                 drop_tail: bool = False, scheduler_interval: str | None = None, scheduler_monitor: str | None = None,
                 task: str | Task | None = None, batch_fn: Callable | None = None,
                 output_fn: Callable | None = None, batch_keys: tuple[str, str] = ("input", "target"),
                 output_key: str = "logits", loss_inputs: str = "prediction", nan_guard: bool = True,
                 checkpoint_every_steps: int = 0, checkpoint_every_seconds: float = 0.0) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        if loss_inputs not in ("prediction", "all"):
            raise ValueError(f"loss_inputs must be 'prediction' or 'all', got {loss_inputs!r}")
        self.accumulate_steps, self.drop_tail = accumulate_steps, drop_tail
        self._last_step_lr: float | None = None
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.precision = resolve_precision(precision, self.device)
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16, fp16 or auto, got {precision!r}")
        self.memory_format = torch.channels_last if channels_last else None
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
        self._eval_module: nn.Module | None = None          # set by a callback (the weight EMA); else the model
        self.eval_forward = self.forward
        self.dist = dist_info()
        if self.dist.distributed:
            # synchronous data parallel: DDP averages the gradients of the processes' shares of each batch
            from torch.nn.parallel import DistributedDataParallel
            ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                          else None)
            self.forward = torch.compile(ddp) if compile else ddp
            progress = progress and self.dist.is_main
        if isinstance(loss_fn, nn.Module):
            loss_fn = loss_fn.to(self.device)
        self.optimizer, self.loss_fn = optimizer, loss_fn
        self.closure_path = bool(getattr(optimizer, "needs_closure", False))
        # fp16: dynamic loss scaling (see the class docstring)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        if self.scaler is not None and self.closure_path:
            raise ValueError(f"precision='fp16' cannot be used with {type(optimizer).__name__}: it computes its "
                             "gradients inside step() from a closure, where the loss scale cannot be removed; use "
                             "fp32 or bf16")
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.epochs, self.test_every_epoch = epochs, test_every_epoch
        self.task = get_task(task)
        self.batch_fn = batch_fn or (lambda b: unpack_batch(b, tuple(batch_keys)))
        self.output_fn = output_fn or (lambda o: unpack_outputs(o, output_key))
        self.loss_inputs = loss_inputs
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress, self.keep_checkpoints = progress, keep_checkpoints
        # the loop's position and record
        self.epoch = 0                       # epochs completed
        self.step_in_epoch = 0               # optimizer steps done in the current epoch
        self.global_step = 0                 # optimizer steps done in the run
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.stopped_early = False           # a callback asked to stop after the current epoch
        self.last_checkpoint: Path | None = None
        self.extra_state: dict[str, Any] = {}       # saved with each checkpoint (e.g. an async server's counters)
        self.batch: tuple | None = None      # the current micro-batch (inputs, targets, extras), on the device
        self.outputs: Any = None             # its model outputs
        self.loss: torch.Tensor | None = None   # its loss (unweighted)
        self.micro_batches: list = []        # the current step's group
        self._epoch_acc: dict[str, Any] | None = None
        self._epoch_rng: dict[str, Any] | None = None
        self._epoch_elapsed = 0.0
        self._epoch_t0 = time.perf_counter()
        self._eval_stale = False
        # True from the end of training on: the evaluations of finish() (and a report of the finished run) are the
        # final ones, where costly test-time views (tta_shift) are used; False while fit() trains
        self.after_training = False

        # the techniques, as callbacks: the built-ins the old keyword arguments ask for, then the user's, then the
        # writers (so that a checkpoint holds every technique's state at the end of the epoch)
        cbs: list[Callback] = []
        if nan_guard:
            cbs.append(NonFiniteGuard())
        cbs.append(GradNormRecord())
        if grad_transforms:
            cbs.append(GradientTransforms(grad_transforms))
        if ema is not None:
            cbs.append(EMACallback(ema))
        if scheduler is not None:
            cbs.append(ScheduleStep(scheduler, scheduler_interval, scheduler_monitor))
        elif scheduler_interval is not None or scheduler_monitor is not None:
            raise ValueError("scheduler_interval/scheduler_monitor given without a scheduler")
        if tta_flip:
            cbs.append(FlipTTA(tta_from_epoch))
        if early_stopping is not None:
            cbs.append(EarlyStoppingCallback(early_stopping))
        old_style = [c for c in callbacks if not isinstance(c, Callback)]
        cbs += [c for c in callbacks if isinstance(c, Callback)]
        if progress:
            cbs.append(ProgressBar())
        if self.out_dir is not None:
            cbs.append(CheckpointWriter(checkpoint_every_steps, checkpoint_every_seconds))
            cbs.append(MetricsLogger(self.out_dir / "metrics.jsonl"))
        cbs += [EpochEndFunction(f) for f in old_style]
        self.callbacks: list[Callback] = cbs
        self._index_callbacks()
        self._fire("setup")

    # ------------------------------------------------------------------ callbacks
    def _index_callbacks(self) -> None:
        """Wrap plain functions, check the names, and list per event the callbacks that define it."""
        self.callbacks = [c if isinstance(c, Callback) else EpochEndFunction(c) for c in self.callbacks]
        names = [c.name for c in self.callbacks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"two callbacks named {dup[0]!r}: a checkpoint keys each callback's state by its name")
        self._ids = [id(c) for c in self.callbacks]
        self._by_event = {e: [c for c in self.callbacks if overrides(c, e)] for e in EVENTS}

    def _fire(self, event: str, *args: Any) -> None:
        for cb in self._by_event[event]:
            getattr(cb, event)(self, *args)

    def find_callback(self, kind: type) -> Any:
        """The first callback of type ``kind`` (or ``None``)."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def _replace_callback(self, kind: type, new: Callback | None, before: type | None = None) -> None:
        self.callbacks = [c for c in self.callbacks if not isinstance(c, kind)]
        if new is not None:
            at = next((i for i, c in enumerate(self.callbacks) if before and isinstance(c, before)),
                      len(self.callbacks))
            self.callbacks.insert(at, new)
        self._index_callbacks()

    # ------------------------------------------------------------------ the evaluated model
    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated and saved: the one a callback set (the weight EMA), else the model."""
        return self._eval_module if self._eval_module is not None else self.model

    def set_eval_model(self, module: nn.Module | None, forward: Callable | None = None) -> None:
        """Evaluate (and save) ``module`` instead of the trained model (``None``: the trained model again)."""
        self._eval_module = module
        self.eval_forward = forward or (module if module is not None else self.forward)

    def restore_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` into the evaluated model (e.g. the best epoch's weights); the final test evaluation is
        then redone."""
        self.eval_model.load_state_dict(state)
        self.redo_final_evaluation()

    def redo_final_evaluation(self) -> None:
        """Have :meth:`finish` evaluate the test set again after the ``on_fit_end`` callbacks, instead of taking the
        last epoch's test metrics (the weights, or how they are evaluated, changed since)."""
        self._eval_stale = True

    # ------------------------------------------------- the old technique attributes (compatibility)
    @property
    def ema(self) -> Any:
        cb = self.find_callback(EMACallback)
        return cb.ema if cb is not None else None

    @ema.setter
    def ema(self, value: Any) -> None:
        if value is None:
            self.set_eval_model(None)
        self._replace_callback(EMACallback, EMACallback(value) if value is not None else None, before=ScheduleStep)
        if value is not None:
            self.find_callback(EMACallback).setup(self)

    @property
    def early_stopping(self) -> EarlyStopping | None:
        cb = self.find_callback(EarlyStoppingCallback)
        return cb.criterion if cb is not None else None

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        cb = self.find_callback(EarlyStoppingCallback)
        return cb.best_state if cb is not None else None

    @property
    def scheduler(self) -> Any:
        cb = self.find_callback(ScheduleStep)
        return cb.scheduler if cb is not None else None

    @property
    def grad_transforms(self) -> list:
        cb = self.find_callback(GradientTransforms)
        return cb.transforms if cb is not None else []

    @grad_transforms.setter
    def grad_transforms(self, value: Sequence[GradTransform]) -> None:
        cb = GradientTransforms(value) if value else None
        if cb is not None:
            cb.setup(self)
        self._replace_callback(GradientTransforms, cb, before=EMACallback)

    @property
    def tta_flip(self) -> bool:
        return self.find_callback(FlipTTA) is not None

    @tta_flip.setter
    def tta_flip(self, on: bool) -> None:
        if on != self.tta_flip:
            self._replace_callback(FlipTTA, FlipTTA() if on else None)

    # ------------------------------------------------------------------ primitives
    def autocast(self):
        """The context the loop runs forward passes and losses in: ``torch.autocast`` to bfloat16 / float16 when
        ``precision`` is ``"bf16"`` / ``"fp16"``, else a no-op context. For code that runs the model the way the trainer does
        (the LR range test, evaluation reports, asynchronous workers)."""
        if self.precision in ("bf16", "fp16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return nullcontext()

    def to_device(self, x: Any, y: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` moved to the trainer's device (tensors, and tensors inside tuples, lists and
        dicts), 4-d inputs in the trainer's ``memory_format`` (channels-last when asked), as the loop does."""
        x, y = _to(x, self.device), _to(y, self.device)
        if self.memory_format is not None and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x, y

    def _prepare(self, batch: Any) -> tuple[Any, Any, dict[str, Any]]:
        x, y, extras = self.batch_fn(batch)
        x, y = self.to_device(x, y)
        return x, y, _to(extras, self.device)

    def inputs(self, loader: Iterable) -> Iterator[Any]:
        """The inputs of ``loader``'s batches, on the device (e.g. to recompute batch-norm statistics)."""
        for batch in loader:
            yield self._prepare(batch)[0]

    def compute_loss(self, outputs: Any, targets: Any, extras: dict[str, Any]) -> torch.Tensor:
        """The loss of a micro-batch: ``loss_fn(output_fn(outputs), targets)``, or with ``loss_inputs="all"``
        ``loss_fn(outputs, targets, **extras)``. Override in a subclass for anything else."""
        if self.loss_inputs == "all":
            return self.loss_fn(outputs, targets, **extras)
        return self.loss_fn(self.output_fn(outputs), targets)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def updates_per_epoch(self) -> int:
        """Optimizer (and schedule) steps in one epoch of the train loader as it is now (needs ``len``)."""
        return optimizer_steps(len(self.train_loader), self.accumulate_steps, self.drop_tail)

    def save_tensors(self, state: dict[str, torch.Tensor], path: str | Path) -> None:
        """Write tensors as safetensors (for callbacks' checkpoint files)."""
        ckpt.save_weights(state, path, {"epoch": str(self.epoch), "step": str(self.step_in_epoch)})

    def load_tensors(self, path: str | Path, missing: str = "") -> dict[str, torch.Tensor]:
        """Read a safetensors file; :class:`~traintricks.training.checkpoint.CheckpointError` names it when it is
        missing (with the ``missing`` hint) or unreadable."""
        path = Path(path)
        if missing and not path.is_file():
            raise ckpt.CheckpointError(f"{path}: not found; {missing}")
        return ckpt.load_weights(path)

    def _groups(self, batches: Iterator) -> Iterable[tuple[list, bool]]:
        """The micro-batches in groups of ``accumulate_steps`` (the last one maybe shorter), each with whether it
        is complete."""
        group: list = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.accumulate_steps:
                yield group, True
                group = []
        if group:
            yield group, False

    def _new_epoch_acc(self) -> dict[str, Any]:
        acc = {"loss_sum": torch.zeros((), dtype=torch.float64, device=self.device), "seen": 0,
               "task": self.task.new_state()}
        if self.scaler is not None:                        # fp16: steps skipped for Inf/NaN gradients
            acc["skipped"] = torch.zeros((), dtype=torch.float64, device=self.device)
        return acc

    def _epoch_batches(self) -> Iterator:
        """The train loader's iterator for this epoch, advanced past the micro-batches already trained when the
        run resumes inside the epoch: they are drawn again from the RNG state the epoch started with and
        discarded, then the RNG state of the checkpoint is put back."""
        skip = self.step_in_epoch * self.accumulate_steps
        if not skip:
            self._epoch_rng = rng_state()
            return iter(self.train_loader)
        now = rng_state()
        set_rng_state(self._epoch_rng)
        it = iter(self.train_loader)
        for i in range(skip):
            if next(it, None) is None:
                raise ckpt.CheckpointError(f"the checkpoint is {skip} micro-batches into epoch {self.epoch + 1} "
                                           f"but the train loader yields only {i} now")
        set_rng_state(now)
        return it

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data (from the resume point inside it, if any); returns the mean loss and
        the task's metrics over its micro-batches."""
        self.model.train()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        if self.step_in_epoch == 0 or self._epoch_acc is None:
            self._epoch_acc = self._new_epoch_acc()
        self._fire("on_epoch_start")
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for group, complete in self._groups(self._epoch_batches()):
            if not complete and self.drop_tail:
                break
            self._train_step(group, params)
        if self.step_in_epoch == 0 and self.drop_tail:
            raise ValueError(f"the train loader yielded fewer than accumulate_steps={self.accumulate_steps} "
                             "micro-batches and drop_tail is set: no optimizer step in the epoch")
        acc = self._epoch_acc
        loss_sum, seen, state = acc["loss_sum"], acc["seen"], acc["task"]
        if self.dist.distributed:                          # metrics over every process's share (task states: sums)
            loss_sum, seen, state = _all_reduce_sums([loss_sum, seen, state])
        out = {"train_loss": loss_sum.item() / max(seen, 1)}
        out.update({f"train_{k}": v for k, v in self.task.compute(state).items()})
        if self.scaler is not None:
            out["skipped_steps"] = int(acc["skipped"].item()) if "skipped" in acc else 0
            out["loss_scale"] = float(self.scaler.get_scale())
        return out

    def _train_step(self, group: list, params: list) -> None:
        """One optimizer step over a group of micro-batches (gradient accumulation: see the class docstring)."""
        self.micro_batches = group
        self._fire("on_step_start")
        parts = [self.batch_fn(b) for b in group]
        sizes = [_numel0(y if y is not None else x) for x, y, _ in parts]
        total = sum(sizes)
        acc = self._epoch_acc
        self.optimizer.zero_grad(set_to_none=True)
        on_device, first_pass = [], []
        for (x, y, extras), n in zip(parts, sizes):
            x, y = self.to_device(x, y)
            extras = _to(extras, self.device)
            self.batch = (x, y, extras)
            self._fire("on_before_forward")              # may replace the batch (adversarial inputs, resizing)
            x, y, extras = self.batch
            failure = None
            with self.autocast():
                try:
                    self.outputs = self.forward(x)
                    self.loss = self.compute_loss(self.outputs, y, extras)
                except NonFiniteInputError as e:     # NaN/Inf activations: divergence, like a NaN loss
                    self.outputs, self.loss, failure = None, None, e
            self._fire("on_after_forward")
            if failure is not None:                  # no guard turned it into the run's end
                raise failure
            if self.closure_path:
                on_device.append((x, y, extras, n))
                first_pass.append(self.loss if n == total else self.loss * (n / total))
            else:
                self._fire("on_before_backward")
                weighted = self.loss if n == total else self.loss * (n / total)
                (self.scaler.scale(weighted) if self.scaler is not None else weighted).backward()
                self._fire("on_after_backward")
            acc["loss_sum"] += self.loss.detach().double() * n
            acc["seen"] += n
            self.task.update(acc["task"], self.output_fn(self.outputs).detach(), y)
        self.outputs = None                       # free the activations; the loss stays, detached, for callbacks
        self.loss = self.loss.detach() if self.loss is not None else None
        if self.closure_path:
            # second-order optimizers and SAM differentiate the loss themselves: the closure returns the group's
            # loss, weighted as above, with its graph; its first call returns the loop's own forward passes (no
            # pass repeated, batch-norm statistics moved once), later calls run them again (at moved weights)
            def closure(batches=on_device, total=total):
                if first_pass:
                    out = sum(first_pass[1:], first_pass[0])
                    first_pass.clear()
                    return out
                out = None
                for x, y, extras, n in batches:
                    with self.autocast():
                        part = self.compute_loss(self.forward(x), y, extras)
                    part = part if n == total else part * (n / total)
                    out = part if out is None else out + part
                return out
            self._fire("on_before_optimizer_step", [])
            self.optimizer.step(closure)
        elif self.scaler is not None:
            self.scaler.unscale_(self.optimizer)               # transforms and records see the true gradients
            self._fire("on_before_optimizer_step", [p for p in params if p.grad is not None])
            found = self.scaler._found_inf_per_device(self.optimizer)     # 1.0 where the step will be skipped
            if found:
                acc["skipped"] = acc.get("skipped", 0) + sum(v.to(self.device, torch.float64) for v in found.values())
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._fire("on_before_optimizer_step", [p for p in params if p.grad is not None])
            self.optimizer.step()
        self._last_step_lr = self.current_lr()          # the rate this step used (a schedule moves it after)
        self.step_in_epoch += 1
        self.global_step += 1
        self._fire("on_after_optimizer_step")
        self._fire("on_step_end")
        self.batch = None

    @torch.no_grad()
    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 prediction of the evaluated model for a batch of inputs on the device, after the callbacks'
        ``on_eval_outputs`` (flip TTA). The caller puts the model in eval mode."""
        return self._eval_outputs(x)[0]

    def _eval_outputs(self, x: Any) -> tuple[torch.Tensor, Any]:
        with self.autocast():
            outputs = self.eval_forward(x)
            pred = self.output_fn(outputs).float()
            for cb in self._by_event["on_eval_outputs"]:
                new = cb.on_eval_outputs(self, x, pred)
                if new is not None:
                    pred = new
        return pred, outputs

    @torch.no_grad()
    def evaluate(self, loader: Iterable, split: str | None = None) -> dict[str, float]:
        """Mean loss and the task's metrics of the evaluated model (in eval mode) over ``loader``; with ``split``
        (``"val"``, ``"test"``) the ``on_evaluate`` callbacks see them. A forward pass raising
        :class:`~traintricks.errors.NonFiniteInputError` gives a NaN loss."""
        self.model.eval()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.eval()          # no penalty terms or auxiliary heads in evaluation losses
        loss_sum, seen = 0.0, 0
        state = self.task.new_state()
        for batch in loader:
            x, y, extras = self._prepare(batch)
            try:
                pred, outputs = self._eval_outputs(x)
                with self.autocast():
                    loss = self.loss_fn(outputs, y, **extras) if self.loss_inputs == "all" else self.loss_fn(pred, y)
            except NonFiniteInputError:
                loss_sum = float("nan")
                break
            n = _numel0(y)
            loss_sum += loss.item() * n
            self.task.update(state, pred, y)
            seen += n
        self.model.train()
        metrics = {"loss": loss_sum / max(seen, 1), **self.task.compute(state)}
        if split is not None:
            self._fire("on_evaluate", split, metrics)
        return metrics

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train from the current position (epoch and step) to ``epochs`` (or a stop asked by a callback); return
        the summary. ``on_exception`` callbacks see any exception before it propagates."""
        if self._ids != [id(c) for c in self.callbacks]:
            self._index_callbacks()
        start_wall = time.perf_counter() - self.wall_seconds
        try:
            self.after_training = False
            self._fire("on_fit_start")
            while self.epoch < self.epochs and not self.stopped_early:
                self._run_epoch(start_wall)
            return self.finish()
        except BaseException as e:
            self._fire("on_exception", e)
            raise

    def _run_epoch(self, start_wall: float) -> None:
        e = self.epoch
        t0 = time.perf_counter() - (self._epoch_elapsed if self.step_in_epoch else 0.0)
        self._epoch_t0 = t0
        record: dict[str, Any] = {"epoch": e + 1}
        record.update(self.train_epoch(e))
        epoch_seconds = time.perf_counter() - t0
        self.train_seconds += epoch_seconds
        # the rate the epoch's last step trained with (not the next one a per-step schedule already set, nor a
        # schedule's value that a callback such as SWA overrode before each step)
        record["lr"] = self._last_step_lr if self._last_step_lr is not None else self.current_lr()
        self._last_step_lr = None
        self._fire("on_train_epoch_end", record)
        if self.val_loader is not None:
            record.update({f"val_{k}": v for k, v in self.evaluate(self.val_loader, "val").items()})
        if self.test_loader is not None and self.test_every_epoch:
            record.update({f"test_{k}": v for k, v in self.evaluate(self.test_loader, "test").items()})
        record["epoch_seconds"] = epoch_seconds
        record["train_seconds"] = self.train_seconds
        self.epoch, self.step_in_epoch, self._epoch_acc = e + 1, 0, None
        self.wall_seconds = time.perf_counter() - start_wall
        record["wall_seconds"] = self.wall_seconds
        self.history.append(record)
        self._fire("on_epoch_end", record)

    def finish(self) -> dict[str, Any]:
        """Let callbacks end the run (``on_fit_end``: e.g. put the best weights back), evaluate on the test set
        when the last record has no test metrics or the weights changed, and build the summary
        (``wall_seconds``: training and the per-epoch evaluations; ``final_eval_seconds``: this final part, e.g.
        the test-time augmentation views)."""
        t_final = time.perf_counter()
        self._eval_stale = False
        self.after_training = True
        summary: dict[str, Any] = {"epochs": self.epoch, "stopped_early": self.stopped_early,
                                   "restored_best": False, "best_epoch": self.best_epoch(),
                                   "train_seconds": self.train_seconds, "precision": self.precision,
                                   "device": str(self.device)}
        self._fire("on_fit_end", summary)
        primary = self.task.primary
        if self.test_loader is not None:
            last = self.history[-1] if self.history else {}
            if self._eval_stale or "test_loss" not in last:
                m = self.evaluate(self.test_loader, "test")
                summary.update({f"test_{k}": v for k, v in m.items()})
            else:
                summary.update({k: v for k, v in last.items() if k.startswith("test_")})
        if self.history and f"val_{primary}" in self.history[-1]:
            summary[f"final_val_{primary}"] = self.history[-1][f"val_{primary}"]
        summary["wall_seconds"] = self.wall_seconds
        summary["final_eval_seconds"] = round(time.perf_counter() - t_final, 3)
        return summary

    def best_epoch(self) -> int:
        """The epoch of the best validation value of the task's primary metric (0 if none); the early-stopping
        callback reports its own best epoch in the summary."""
        es = self.early_stopping
        if es is not None and es.best_epoch:
            return es.best_epoch
        key = f"val_{self.task.primary}"
        scored = [r for r in self.history if key in r]
        if not scored:
            return 0
        pick = max if self.task.mode == "max" else min
        return pick(scored, key=lambda r: r[key])["epoch"]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights needed to continue exactly where training is: the position (epoch and step
        in it), the optimizer, every RNG, the epoch's running sums, the history and each callback's state (by
        name). Tensors and plain values only (``weights_only``-loadable)."""
        mid = self.step_in_epoch > 0
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "stopped_early": self.stopped_early,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "rng": rng_state(),
            "epoch_rng": self._epoch_rng if mid else None,
            "epoch_acc": self._epoch_acc if mid else None,
            "epoch_elapsed": time.perf_counter() - self._epoch_t0 if mid else 0.0,
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
            "extra": self.extra_state,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format", 1) == 1:
            state = _from_format_1(state)
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stopped_early = bool(state["stopped_early"])
        self.history = list(state["history"])
        self.train_seconds, self.wall_seconds = float(state["train_seconds"]), float(state["wall_seconds"])
        set_rng_state(state["rng"])
        self._epoch_rng = state["epoch_rng"]
        self._epoch_acc = _to(state["epoch_acc"], self.device) if state["epoch_acc"] is not None else None
        self._epoch_elapsed = float(state["epoch_elapsed"])
        saved = state["callbacks"]
        for c in self.callbacks:
            if c.name in saved:
                c.load_state_dict(_to(saved[c.name], self.device))
        self.extra_state = dict(state.get("extra", {}))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save_checkpoint(self) -> Path:
        """Write ``out_dir/checkpoints/epoch-NNNN`` (at an epoch's end) or ``epoch-NNNN-step-MMMMMM`` (``MMMMMM``
        optimizer steps into epoch ``NNNN + 1``) atomically: the model's weights, each callback's files
        (``on_save_checkpoint``) and ``state.pt``."""
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs out_dir")

        def write(d: Path) -> None:
            self.save_tensors(self.model.state_dict(), d / "model.safetensors")
            self._fire("on_save_checkpoint", d)
            ckpt.save_state(self.state_dict(), d / "state.pt")

        self.last_checkpoint = ckpt.write_checkpoint(self.out_dir / "checkpoints", self.epoch, write,
                                                     keep=self.keep_checkpoints, step=self.step_in_epoch)
        return self.last_checkpoint

    def resume(self, directory: str | Path | None = None) -> Path:
        """Load the latest complete checkpoint under ``directory/checkpoints`` (default: ``out_dir``)."""
        root = Path(directory) if directory is not None else self.out_dir
        if root is None:
            raise ValueError("resume needs a directory")
        path = ckpt.latest_checkpoint(root / "checkpoints")
        if path is None:
            raise ckpt.CheckpointError(f"{root / 'checkpoints'}: no complete checkpoint to resume from")
        self.model.load_state_dict(ckpt.load_weights(path / "model.safetensors"))
        self.load_state_dict(ckpt.load_state(path / "state.pt"))
        self._fire("on_load_checkpoint", path)
        self.last_checkpoint = path
        return path


def _from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint state written before the callbacks (format 1: epoch boundaries only) in today's form."""
    cbs = {"schedule": state.get("scheduler"), "grad_transforms": {"transforms": state.get("grad_transforms", [])},
           "ema": {"updates": state.get("ema_updates", 0)}}
    if state.get("early_stopping") is not None:
        cbs["early_stopping"] = state["early_stopping"]
    return {**state, "step_in_epoch": 0, "global_step": 0, "epoch_rng": None, "epoch_acc": None,
            "epoch_elapsed": 0.0, "callbacks": {k: v for k, v in cbs.items() if v is not None},
            "rng": {"torch": state["rng_torch"], "python": state["rng_python"], "cuda": state.get("rng_cuda", [])}}


def _all_reduce_sums(values: list) -> list:
    """Sum tensors and numbers (nested in lists/dicts) over the process group."""
    flat: list = []

    def collect(v):
        if isinstance(v, dict):
            for x in v.values():
                collect(x)
        elif isinstance(v, list):
            for x in v:
                collect(x)
        elif isinstance(v, (torch.Tensor, int, float)) and not isinstance(v, bool):
            flat.append(v)
    collect(values)
    dev = next((v.device for v in flat if isinstance(v, torch.Tensor)), torch.device("cpu"))
    packed = torch.cat([v.detach().to(dev, torch.float64).reshape(-1) if isinstance(v, torch.Tensor) else
                        torch.tensor([float(v)], dtype=torch.float64, device=dev) for v in flat])
    torch.distributed.all_reduce(packed)
    sizes = [v.numel() if isinstance(v, torch.Tensor) else 1 for v in flat]
    it = iter(packed.split(sizes))

    def rebuild(v):
        if isinstance(v, dict):
            return {k: rebuild(x) for k, x in v.items()}
        if isinstance(v, list):
            return [rebuild(x) for x in v]
        if isinstance(v, torch.Tensor):
            return next(it).reshape(v.shape).to(v.dtype)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            r = next(it).item()
            return int(round(r)) if isinstance(v, int) else r
        return v
    return rebuild(values)
