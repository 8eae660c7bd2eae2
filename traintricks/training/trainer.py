"""The training loop: forward, loss, backward, gradient transforms, weight update, evaluation.

:class:`Trainer` runs epochs over :class:`~traintricks.data.TensorLoader` batches (or any iterable
of ``(x, y)`` batches with ``set_epoch``), evaluates after every epoch, writes ``metrics.jsonl``
and an atomic checkpoint per epoch, applies early stopping, and resumes from a checkpoint to the
same result an uninterrupted run reaches.
"""
from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..evaluation import EarlyStopping, correct_count
from ..errors import NonFiniteInputError
from ..parallel.ddp import dist_info
from . import checkpoint as ckpt

GradTransform = Callable[[Sequence[torch.Tensor]], None]


def optimizer_steps(micro_batches: int, accumulate_steps: int, drop_tail: bool = False) -> int:
    """Optimizer steps in an epoch of ``micro_batches`` with ``accumulate_steps`` micro-batches per step: the
    incomplete tail group counts as one step unless ``drop_tail``. Schedules take their total step count from it."""
    if micro_batches < 0 or accumulate_steps < 1:
        raise ValueError(f"need micro_batches >= 0 and accumulate_steps >= 1, got {micro_batches}, {accumulate_steps}")
    return micro_batches // accumulate_steps if drop_tail else -(-micro_batches // accumulate_steps)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` picks bf16 autocast where the hardware runs it fast (CPU with AVX-512 BF16, or CUDA
    with bf16 support), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
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


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader``; evaluate on ``val_loader``/``test_loader``.

    Args:
        model, optimizer, loss_fn: the usual PyTorch objects; ``loss_fn(logits, y)`` returns a scalar.
        scheduler: a learning-rate scheduler stepped after every optimizer step (or ``None``).
        epochs: number of epochs to train.
        early_stopping: an :class:`~traintricks.evaluation.EarlyStopping` (or ``None``).
        grad_transforms: callables applied, in order, to the parameters' gradients between backward
            and the optimizer step (e.g. clipping); each receives the list of parameters with grads.
        out_dir: where ``metrics.jsonl``, ``summary.json`` and ``checkpoints/`` go (``None``: nothing written).
        device: ``"cpu"``, ``"cuda"``...; precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"``.
        channels_last: move model and 4-D batches to channels-last memory format.
        compile: run the model through ``torch.compile``.
        tta_flip: evaluate on the mean of the logits of the image and its horizontal mirror.
        tta_from_epoch: use the flip only once this many epochs are done (with a late start of the flip
            augmentation, a model that has never seen mirror images is evaluated without them).
        test_every_epoch: evaluate on ``test_loader`` after every epoch (else only at the end).
        callbacks: ``cb(trainer, record)`` called after each epoch's record is complete and saved.
        accumulate_steps: ``k``, micro-batches per optimizer step (gradient accumulation); the loader yields
            micro-batches, the schedule is stepped once per optimizer step. Normalization: each micro-batch's
            loss is weighted by its share of the examples of its group, ``n_i / sum(n_j)``, before backward,
            so the update is the one of the group's micro-batches as one batch (``loss_fn`` a per-example mean):
            k micro-batches of ``B`` give the update of one batch of ``k*B``, and when the epoch's micro-batches
            do not divide into groups of k, the last (tail) group of ``t < k`` micro-batches makes one more
            update equal to that of one batch of the examples it has (10 examples in micro-batches of 2 with
            k=2: 3 updates, the last over 2 examples). ``k=1`` is exactly ``loss.backward()``, unscaled.
            The number of updates per epoch is :func:`optimizer_steps` of the loader's length.
        drop_tail: skip an incomplete last group (not computed, not counted in ``train_loss``), the analogue of
            ``drop_last`` for the accumulated batch: the recipe sets it when it drops the last incomplete batch,
            so a run with ``accumulate_steps=k`` uses the same examples as one without.
        progress: show a progress bar.
        ema: a :class:`~traintricks.evaluation.ModelEMA` of the model, updated after every optimizer step;
            validation, test, early stopping and the saved model then use the averaged weights.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                 train_loader: Iterable, val_loader: Iterable | None = None, test_loader: Iterable | None = None,
                 *, scheduler: Any = None, epochs: int = 10, early_stopping: EarlyStopping | None = None,
                 grad_transforms: Sequence[GradTransform] = (), out_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False, tta_flip: bool = False, test_every_epoch: bool = True,
                 callbacks: Sequence[Callable] = (), progress: bool = True, keep_checkpoints: int = 2,
                 accumulate_steps: int = 1, ema: Any = None, tta_from_epoch: int = 0,
                 drop_tail: bool = False) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        if grad_transforms and getattr(optimizer, "needs_closure", False):
            raise ValueError(f"grad_transforms cannot be applied with {type(optimizer).__name__}: it computes its "
                             "own gradients from the loss closure inside step()")
        self.accumulate_steps, self.drop_tail = accumulate_steps, drop_tail
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.precision = resolve_precision(precision, self.device)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
        self.memory_format = torch.channels_last if channels_last else None
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile else self.model
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
        self.optimizer, self.loss_fn, self.scheduler = optimizer, loss_fn, scheduler
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.epochs, self.early_stopping = epochs, early_stopping
        self.grad_transforms, self.callbacks = list(grad_transforms), list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.test_every_epoch = test_every_epoch
        self.tta_flip, self.progress, self.keep_checkpoints = tta_flip, progress, keep_checkpoints
        self.tta_from_epoch = tta_from_epoch
        self.epoch = 0                       # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        self.stopped_early = False
        self.last_checkpoint: Path | None = None
        self.extra_state: dict[str, Any] = {}       # saved with each checkpoint (e.g. an async server's counters)
        self.ema = ema
        if ema is not None:
            ema.module.to(self.device)
            if channels_last:
                ema.module.to(memory_format=torch.channels_last)
            self.eval_forward = ema.module

    # ------------------------------------------------------------------ steps
    @property
    def eval_model(self) -> nn.Module:
        """The model that is evaluated and saved: the weight EMA when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.memory_format is not None and x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x, y

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def updates_per_epoch(self) -> int:
        """Optimizer (and schedule) steps in one epoch of the train loader as it is now (needs ``len``)."""
        return optimizer_steps(len(self.train_loader), self.accumulate_steps, self.drop_tail)

    def _groups(self) -> Iterable[tuple[list, bool]]:
        """The loader's micro-batches in groups of ``accumulate_steps`` (the last one maybe shorter), each with
        whether it is complete."""
        group: list = []
        for batch in self.train_loader:
            group.append(batch)
            if len(group) == self.accumulate_steps:
                yield group, True
                group = []
        if group:
            yield group, False

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns mean loss and accuracy over its batches."""
        self.model.train()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.train()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        if hasattr(self.scheduler, "set_epoch"):          # e.g. a batch-size schedule
            self.scheduler.set_epoch(epoch, self.train_loader)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.long)
        seen = 0
        gn_sum = torch.zeros((), dtype=torch.float64, device=self.device)   # gradient norms before transforms
        gn_max = torch.zeros((), dtype=torch.float64, device=self.device)
        updates = 0
        bar = tqdm(total=len(self.train_loader) if hasattr(self.train_loader, "__len__") else None,
                   desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                   disable=not (self.progress and sys.stderr.isatty()),
                   file=sys.stderr, dynamic_ncols=True)
        closure_path = getattr(self.optimizer, "needs_closure", False)
        step = 0                                  # micro-batches done this epoch
        with bar:
            for group, complete in self._groups():
                if not complete and self.drop_tail:
                    break
                # each micro-batch's loss weighted by its share of the group's examples: the update of the group
                # as one batch (k micro-batches of B = one batch of kB; a tail group = one batch of what is left)
                sizes = [y.shape[0] for _, y in group]
                total = sum(sizes)
                self.optimizer.zero_grad(set_to_none=True)
                on_device = []
                for (x, y), n in zip(group, sizes):
                    x, y = self._to_device(x, y)
                    with self._autocast():
                        try:
                            logits = self.forward(x)
                            loss = self.loss_fn(logits, y)
                            value = loss.item()
                        except NonFiniteInputError:     # NaN/Inf activations or logits: divergence, like a NaN loss
                            value = float("nan")
                    if not math.isfinite(value):
                        where = f"{self.last_checkpoint}" if self.last_checkpoint else "none was written yet"
                        raise NonFiniteLossError(
                            f"loss became {value} at epoch {epoch + 1}, step {step + 1}; training stopped. "
                            f"Last good checkpoint: {where}. Try a lower learning rate or gradient clipping.")
                    if closure_path:
                        on_device.append((x, y, n))
                    else:
                        (loss if n == total else loss * (n / total)).backward()
                    loss_sum += value * n
                    correct += correct_count(logits, y).cpu()
                    seen += n
                    step += 1
                    bar.update(1)
                del logits, loss
                if closure_path:
                    # second-order optimizers differentiate the loss themselves (Hessian-vector products): the
                    # closure returns the group's loss, weighted as above, with its graph
                    def closure(batches=on_device, total=total):
                        out = None
                        for x, y, n in batches:
                            with self._autocast():
                                part = self.loss_fn(self.forward(x), y)
                            part = part if n == total else part * (n / total)
                            out = part if out is None else out + part
                        return out
                    self.optimizer.step(closure)
                with_grad = [p for p in params if p.grad is not None]
                if with_grad:                     # the norm before the transforms (closure path: the step's gradient)
                    gn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
                        [p.grad for p in with_grad]))).double()
                    gn_sum += gn
                    torch.maximum(gn_max, gn, out=gn_max)
                    updates += 1
                if not closure_path:
                    for t in self.grad_transforms:
                        t(with_grad)
                    self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                if self.scheduler is not None:
                    self.scheduler.step()
                if self.progress and any(i % 10 == 0 for i in range(step - len(group), step)):
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{self.current_lr():.3g}", refresh=False)
        if step == 0 and self.drop_tail:
            raise ValueError(f"the train loader yielded fewer than accumulate_steps={self.accumulate_steps} "
                             "micro-batches and drop_tail is set: no optimizer step in the epoch")
        if self.dist.distributed:                          # metrics over every process's share
            totals = torch.stack([loss_sum, correct.double(), torch.tensor(float(seen), dtype=torch.float64)])
            torch.distributed.all_reduce(totals)
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2])
        out = {"train_loss": loss_sum.item() / max(seen, 1), "train_accuracy": correct.item() / max(seen, 1)}
        if updates:
            out["grad_norm"], out["grad_norm_max"] = gn_sum.item() / updates, gn_max.item()
        return out

    @torch.no_grad()
    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of the evaluated model (the EMA when there is one) for a batch on the device; the mean
        with the mirror image's when ``tta_flip``. The caller puts the model in eval mode."""
        with self._autocast():
            logits = self.eval_forward(x).float()
            if self.tta_flip and x.ndim == 4 and self.epoch >= self.tta_from_epoch:
                logits = 0.5 * (logits + self.eval_forward(x.flip(-1)).float())
        return logits

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Mean loss and accuracy of the model (in eval mode; its EMA when there is one) over ``loader``."""
        self.model.eval()
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.eval()          # no penalty terms or auxiliary heads in evaluation losses
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in loader:
            x, y = self._to_device(x, y)
            logits = self.eval_logits(x)
            loss_sum += self.loss_fn(logits, y).item() * y.shape[0]
            correct += correct_count(logits, y).item()
            seen += y.shape[0]
        self.model.train()
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train from the current epoch to ``epochs`` (or an early stop); return the summary."""
        start_wall = time.perf_counter() - self.wall_seconds
        while self.epoch < self.epochs and not self.stopped_early:
            e = self.epoch
            t0 = time.perf_counter()
            record: dict[str, Any] = {"epoch": e + 1}
            record.update(self.train_epoch(e))
            epoch_seconds = time.perf_counter() - t0
            self.train_seconds += epoch_seconds
            record["lr"] = self.current_lr()
            if self.ema is not None and self.ema.bn == "recompute":
                self.ema.recompute_bn(self._to_device(x, y)[0] for x, y in self.train_loader)
            if self.val_loader is not None:
                m = self.evaluate(self.val_loader)
                record["val_loss"], record["val_accuracy"] = m["loss"], m["accuracy"]
            if self.test_loader is not None and self.test_every_epoch:
                m = self.evaluate(self.test_loader)
                record["test_loss"], record["test_accuracy"] = m["loss"], m["accuracy"]
            record["epoch_seconds"] = epoch_seconds
            record["train_seconds"] = self.train_seconds
            self.epoch = e + 1
            if self.early_stopping is not None:
                before = self.early_stopping.best_epoch
                self.stopped_early = self.early_stopping.update(self.epoch, record)
                if self.early_stopping.restore_best and self.early_stopping.best_epoch != before:
                    self.best_state = {k: v.detach().clone() for k, v in self.eval_model.state_dict().items()}
            self.wall_seconds = time.perf_counter() - start_wall
            record["wall_seconds"] = self.wall_seconds
            self.history.append(record)
            self._log(record)
            if self.out_dir is not None and self.dist.is_main:      # only rank 0 writes
                self.save_checkpoint()
                ckpt.atomic_write_text(self.out_dir / "metrics.jsonl",
                                       "".join(_json_line(r) for r in self.history))
            for cb in self.callbacks:
                cb(self, record)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Restore the best weights if asked, evaluate on the test set, and build the summary."""
        restored = False
        if self.early_stopping is not None and self.early_stopping.restore_best and self.best_state is not None \
                and self.early_stopping.best_epoch != self.epoch:
            self.eval_model.load_state_dict(self.best_state)
            restored = True
        summary: dict[str, Any] = {"epochs": self.epoch, "stopped_early": self.stopped_early,
                                   "restored_best": restored, "best_epoch": self.best_epoch(),
                                   "train_seconds": self.train_seconds, "precision": self.precision,
                                   "device": str(self.device)}
        if self.test_loader is not None:
            if restored or not self.history or "test_accuracy" not in self.history[-1]:
                m = self.evaluate(self.test_loader)
                summary["test_loss"], summary["test_accuracy"] = m["loss"], m["accuracy"]
            else:
                summary["test_loss"] = self.history[-1]["test_loss"]
                summary["test_accuracy"] = self.history[-1]["test_accuracy"]
        if self.history and "val_accuracy" in self.history[-1]:
            summary["final_val_accuracy"] = self.history[-1]["val_accuracy"]
        summary["wall_seconds"] = self.wall_seconds
        return summary

    def best_epoch(self) -> int:
        """The early-stopping best epoch, else the epoch of highest validation accuracy (0 if none)."""
        if self.early_stopping is not None and self.early_stopping.best_epoch:
            return self.early_stopping.best_epoch
        scored = [r for r in self.history if "val_accuracy" in r]
        return max(scored, key=lambda r: r["val_accuracy"])["epoch"] if scored else 0

    def _log(self, r: dict[str, Any]) -> None:
        if not self.progress:
            return
        parts = [f"epoch {r['epoch']}/{self.epochs}", f"train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}"]
        if "val_loss" in r:
            parts.append(f"val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f}")
        if "test_accuracy" in r:
            parts.append(f"test acc {r['test_accuracy']:.4f}")
        parts.append(f"lr {r['lr']:.3g}  {r['epoch_seconds']:.1f}s")
        tqdm.write(" | ".join(parts), file=sys.stderr)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything but the model weights needed to continue exactly where training is."""
        return {
            "format": 1,
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping is not None else None,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_python": random.getstate(),
            "grad_transforms": [t.state_dict() if hasattr(t, "state_dict") else {} for t in self.grad_transforms],
            "extra": self.extra_state,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.early_stopping is not None and state["early_stopping"] is not None:
            self.early_stopping.load_state_dict(state["early_stopping"])
        self.stopped_early = bool(state["stopped_early"])
        self.history = list(state["history"])
        self.train_seconds, self.wall_seconds = float(state["train_seconds"]), float(state["wall_seconds"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        random.setstate(state["rng_python"])
        for t, st in zip(self.grad_transforms, state.get("grad_transforms", [])):
            if hasattr(t, "load_state_dict"):
                t.load_state_dict(st)
        self.extra_state = dict(state.get("extra", {}))

    def save_checkpoint(self) -> Path:
        """Write ``out_dir/checkpoints/epoch-NNNN`` atomically."""
        if self.out_dir is None:
            raise ValueError("save_checkpoint needs out_dir")

        def write(d: Path) -> None:
            meta = {"epoch": str(self.epoch)}
            ckpt.save_weights(self.model.state_dict(), d / "model.safetensors", meta)
            if self.best_state is not None:
                ckpt.save_weights(self.best_state, d / "best.safetensors", meta)
            if self.ema is not None:
                ckpt.save_weights(self.ema.state_dict(), d / "ema.safetensors", meta)
            ckpt.save_state(self.state_dict(), d / "state.pt")

        self.last_checkpoint = ckpt.write_checkpoint(self.out_dir / "checkpoints", self.epoch, write,
                                                     keep=self.keep_checkpoints)
        return self.last_checkpoint

    def resume(self, directory: str | Path | None = None) -> Path:
        """Load the latest complete checkpoint under ``directory/checkpoints`` (default: ``out_dir``)."""
        root = Path(directory) if directory is not None else self.out_dir
        if root is None:
            raise ValueError("resume needs a directory")
        path = ckpt.latest_checkpoint(root / "checkpoints")
        if path is None:
            raise ckpt.CheckpointError(f"{root / 'checkpoints'}: no complete checkpoint to resume from")
        weights = ckpt.load_weights(path / "model.safetensors")
        self.model.load_state_dict(weights)
        if (path / "best.safetensors").is_file():
            self.best_state = ckpt.load_weights(path / "best.safetensors")
        state = ckpt.load_state(path / "state.pt")
        self.load_state_dict(state)
        if self.ema is not None:
            if not (path / "ema.safetensors").is_file():
                raise ckpt.CheckpointError(f"{path / 'ema.safetensors'}: not found; the run was started without "
                                           "a weight EMA")
            self.ema.load_state_dict(ckpt.load_weights(path / "ema.safetensors"), state.get("ema_updates", 0))
        self.last_checkpoint = path
        return path


def _json_line(record: dict[str, Any]) -> str:
    import json
    return json.dumps(record) + "\n"
