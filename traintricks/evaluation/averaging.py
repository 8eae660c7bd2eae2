"""Weight averaging: stochastic weight averaging (SWA) and the average of the last k checkpoints.

**SWA** (Izmailov, Podoprikhin, Garipov, Vetrov & Wilson 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization", arXiv:1803.05407). From epoch ``swa_start`` on, the weights are trained with their own
learning rate and, at the end of each epoch (or of each cycle), added to an equal running average

    theta_swa <- theta_swa + (theta - theta_swa) / (n + 1),      n <- n + 1          (theta_swa = theta at n = 0)

which is the model evaluated and saved. Its batch-norm statistics were never computed under ``theta_swa``: they are
re-estimated with one pass over the training data (a cumulative average, as ``torch.optim.swa_utils.update_bn``).
The SWA learning rate, per parameter group (``lr0``: the rate the main schedule left when SWA began):

- *constant* (``cycle_epochs = 0``; :class:`torch.optim.swa_utils.SWALR`): after ``j`` SWA epochs
  ``lr = swa_lr * a(t) + lr0 * (1 - a(t))``, ``t = min(1, j / anneal_epochs)`` (``t = 1`` from the start when
  ``anneal_epochs = 0``), ``a(t) = (1 - cos(pi t)) / 2`` (``"cos"``) or ``t`` (``"linear"``); averaged each epoch;
- *cyclic* (``cycle_epochs = c``; the paper's eq. 2): at the ``i``-th step of each cycle of ``c`` epochs
  (``i = 1..S``, ``S = c * updates per epoch``) ``lr = (1 - t) lr0 + t swa_lr``, ``t = i / S``: from near ``lr0``
  down to ``swa_lr``, averaged at each cycle's end.

The equal-average module is :class:`AveragedModel` (a drop-in for ``torch.optim.swa_utils.AveragedModel`` with
the default average); :class:`SWA` is the loop's callback (``callbacks = [{name = "swa", swa_lr = 0.05}]``).

**Checkpoint averaging** (Popel & Bojar 2018, "Training Tips for the Transformer Model", arXiv:1804.00247, sec. 4.8;
Vaswani et al. 2017 averaged the last 5 or 20): the element-wise mean of the weights of the last ``k``
checkpoints (:func:`average_state_dicts`). Floating tensors are averaged (accumulated in float64, written in their
own dtype); integer buffers (``num_batches_tracked``) are the last checkpoint's. Batch-norm running statistics are
averaged like the weights by default (cheap, and what averaging checkpoint files gives), or re-estimated with the
averaged weights (``bn = "recompute"``). :class:`CheckpointAverage` keeps the last ``k`` epoch-end weights in the
loop and averages them when training ends; ``traintricks average RUN --last k`` averages a run's checkpoint files.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..callback import Callback

BN_MODES = ("recompute", "average", "copy")


def is_bn(m: nn.Module) -> bool:
    """A normalization layer with running statistics (torch's batch norms, traintricks' own, any module with
    ``running_mean``/``running_var``/``momentum``)."""
    return isinstance(m, nn.modules.batchnorm._NormBase) or (
        hasattr(m, "running_mean") and hasattr(m, "running_var") and hasattr(m, "momentum"))


@torch.no_grad()
def recompute_bn(module: nn.Module, batches: Iterable, forward: Callable | None = None,
                 device: torch.device | str | None = None, max_batches: int | None = None) -> int:
    """Re-estimate ``module``'s batch-norm running statistics with its current weights: reset them, then a
    cumulative average over the batches (the ``n``-th batch enters with momentum ``1/n``), as
    :func:`torch.optim.swa_utils.update_bn` (``momentum=None``) computes it. The module's train/eval mode and the
    norms' momenta are restored afterwards.

    Args:
        batches: an iterable of batches: the input tensor, or a list/tuple whose first element is (as ``update_bn``).
        forward: called on each input instead of ``module`` (e.g. a compiled wrapper of it).
        device: move each input there first.
        max_batches: at most this many batches (``None``: all of them, as ``update_bn``).

    Returns the number of batches used (0, and nothing changed, for a module without running statistics)."""
    bns = [m for m in module.modules() if is_bn(m) and getattr(m, "running_mean", None) is not None]
    if not bns:
        return 0
    saved = [(m, m.momentum) for m in bns]
    was_training = module.training
    for m in bns:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        if getattr(m, "num_batches_tracked", None) is not None:
            m.num_batches_tracked.zero_()
    module.train()
    n = 0
    try:
        for x in batches if max_batches is None or max_batches > 0 else ():
            if isinstance(x, (list, tuple)):
                x = x[0]
            if device is not None:
                x = x.to(device)
            for m in bns:              # rate 1/n: the n-th batch makes the estimate the mean over n batches
                m.momentum = 1.0 / (n + 1)
            (forward or module)(x)
            n += 1
            if max_batches is not None and n >= max_batches:     # (no further batch is drawn: no RNG used)
                break
    finally:
        for m, r in saved:
            m.momentum = r
        module.train(was_training)
    return n


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` (state dicts of one architecture, oldest first): floating and complex
    tensors averaged (summed in float64 / complex128, returned in their own dtype, on the first state's device),
    integer and boolean ones (``num_batches_tracked``) taken from the last.

    Raises ``ValueError`` for no states, or states whose keys or shapes differ (naming the key)."""
    if not states:
        raise ValueError("average_state_dicts: no state dicts to average")
    first, last = states[0], states[-1]
    for i, s in enumerate(states[1:], 1):
        if s.keys() != first.keys():
            diff = sorted(set(s) ^ set(first))
            raise ValueError(f"state {i} has other keys than state 0 (e.g. {diff[0]!r}): not the same model")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise ValueError(f"state {i}: {k!r} has shape {tuple(v.shape)}, state 0 {tuple(first[k].shape)}")
    out = {}
    for k, v in first.items():
        if v.is_floating_point() or v.is_complex():
            wide = torch.complex128 if v.is_complex() else torch.float64
            acc = torch.zeros(v.shape, dtype=wide, device=v.device)
            for s in states:
                acc += s[k].to(device=v.device, dtype=wide)
            out[k] = (acc / len(states)).to(v.dtype)
        else:
            out[k] = last[k].clone()
    return out


class AveragedModel(nn.Module):
    """An equal running average of ``model``'s parameters, in ``self.module`` (a copy): a drop-in for
    :class:`torch.optim.swa_utils.AveragedModel` with its default (SWA) average and the same state dict
    (``module.*`` and ``n_averaged``).

    ``update_parameters(model)``: the first call copies the weights, the ``n+1``-th makes
    ``avg <- avg + (theta - avg) / (n + 1)`` (multi-tensor lerp). Buffers: copied from ``model`` at each update
    (``use_buffers=False``, torch's default; recompute the batch-norm statistics afterwards with
    :func:`recompute_bn`), or averaged like the parameters (``use_buffers=True``: floating buffers averaged; integer
    ones -- ``num_batches_tracked`` -- copied, where torch adds a fraction to integers).

    Args:
        model: the model to average. device: where the copy lives (default: the model's).
        use_buffers: average the floating buffers too.
    """

    def __init__(self, model: nn.Module, device: torch.device | str | None = None, use_buffers: bool = False) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _tensors(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = list(zip(self.module.parameters(), model.parameters()))
        if self.use_buffers:
            pairs += list(zip(self.module.buffers(), model.buffers()))
        return pairs

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Add ``model``'s current weights to the average."""
        n = int(self.n_averaged)
        groups: dict[tuple, tuple[list, list]] = {}
        for avg, cur in self._tensors(model):
            cur = cur.detach().to(avg.device)
            if n == 0 or not (avg.is_floating_point() or avg.is_complex()):
                avg.copy_(cur)
            else:
                a, c = groups.setdefault((avg.device, avg.dtype), ([], []))
                a.append(avg)
                c.append(cur)
        for a, c in groups.values():
            torch._foreach_lerp_(a, c, 1.0 / (n + 1))
        if not self.use_buffers:
            for b_avg, b in zip(self.module.buffers(), model.buffers()):
                b_avg.copy_(b.detach().to(b_avg.device))
        self.n_averaged += 1


def _anneal(strategy: str, t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2 if strategy == "cos" else t


class SWA(Callback):
    """Stochastic weight averaging in the training loop (module docstring): from epoch ``swa_start`` on, the SWA
    learning rate (when ``swa_lr`` is set) and an equal average of the weights at the end of each epoch (each
    cycle), which becomes the model the trainer evaluates and saves once it holds one; its batch-norm statistics
    are recomputed on the training data after each addition. ``swa.safetensors`` and the count are checkpointed.

    It composes with the run's schedule: the main schedule runs up to ``swa_start`` and keeps being stepped after
    it, but from then on this callback sets each group's rate before every optimizer step (it runs after the
    schedule, so the SWA rate is the one used); ``lr0`` is the rate the main schedule left at ``swa_start``. Groups
    with an ``lr_mult`` (layer-wise rates, ``optim.param_groups``) get ``swa_lr * lr_mult``. The summary gains
    ``swa_averaged`` (models in the average) and ``last_weights_test_<metric>`` (the last weights, not averaged).

    Args:
        model: the trained model (supplied by the recipe).
        swa_start: epochs trained before SWA begins (``None``: 75% of the run's epochs, the paper's budget).
        swa_lr: the SWA learning rate (``None``: keep the main schedule's rates; average only).
        anneal_epochs: epochs to move from ``lr0`` to ``swa_lr`` (constant mode; 0: at once).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_epochs: 0: constant rate, average every epoch; ``c >= 1``: the cyclic rate over cycles of ``c``
            epochs, average at each cycle's end (needs ``swa_lr``).
        bn: ``"recompute"`` (one pass over the training data, as ``update_bn``), ``"average"`` (average the
            buffers too) or ``"copy"`` (the live model's statistics).
        bn_batches: batches for ``"recompute"`` (0: the whole training set).

    Raises ``ValueError`` for a negative ``swa_start`` or one not before the last epoch, a non-positive
    ``swa_lr``, a negative ``anneal_epochs``/``cycle_epochs``/``bn_batches``, an unknown strategy or ``bn``
    mode, the cyclic mode without ``swa_lr``, ``swa_lr`` with an optimizer that learns its own rate
    (hypergradient), or another callback (the weight EMA) already being the evaluated model.
    """

    name = "swa"

    def __init__(self, model: nn.Module, swa_start: int | None = None, swa_lr: float | None = None,
                 anneal_epochs: int = 10, anneal_strategy: str = "cos", cycle_epochs: int = 0,
                 bn: str = "recompute", bn_batches: int = 0) -> None:
        if swa_start is not None and swa_start < 0:
            raise ValueError(f"swa_start must be >= 0, got {swa_start}")
        if swa_lr is not None and not swa_lr > 0:
            raise ValueError(f"swa_lr must be positive, got {swa_lr}")
        if anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be >= 0, got {anneal_epochs}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if cycle_epochs < 0:
            raise ValueError(f"cycle_epochs must be >= 0, got {cycle_epochs}")
        if cycle_epochs and swa_lr is None:
            raise ValueError("cycle_epochs: the cyclic SWA rate goes from the rate at swa_start down to swa_lr: "
                             "set swa_lr")
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        if bn_batches < 0:
            raise ValueError(f"bn_batches must be >= 0 (0: all), got {bn_batches}")
        self.swa_start, self.swa_lr = swa_start, swa_lr
        self.anneal_epochs, self.anneal_strategy, self.cycle_epochs = anneal_epochs, anneal_strategy, cycle_epochs
        self.bn, self.bn_batches = bn, bn_batches
        self.averaged = AveragedModel(model, use_buffers=(bn == "average"))
        self.averaged.module.eval().requires_grad_(False)
        self.start = swa_start if swa_start is not None else 0
        self.lr0: list[float] | None = None

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def setup(self, trainer) -> None:
        self.start = self.swa_start if self.swa_start is not None else (3 * trainer.epochs) // 4
        if self.start >= trainer.epochs:
            raise ValueError(f"swa_start ({self.start}) must be below the run's epochs ({trainer.epochs}): nothing "
                             "would be averaged")
        if self.swa_lr is not None and "hypergrad_lr" in trainer.optimizer.defaults:
            raise ValueError(f"swa_lr would overwrite the rate {type(trainer.optimizer).__name__} learns "
                             "(hypergradient descent); leave swa_lr unset to average only")
        if trainer.eval_model is not trainer.model or any(c.name == "ema" for c in trainer.callbacks if c is not self):
            raise ValueError("swa: another callback (the weight EMA?) is already the evaluated model; use one "
                             "weight average")
        self.averaged.to(trainer.device)
        if trainer.memory_format is not None:
            self.averaged.module.to(memory_format=trainer.memory_format)

    # ------------------------------------------------------------------------------------------ learning rate
    def lrs(self, trainer) -> list[float]:
        """The SWA rate of each group for the step about to run (the SWA phase must have begun)."""
        j = trainer.epoch - self.start
        out = []
        for g, lr0 in zip(trainer.optimizer.param_groups, self.lr0):
            swa = self.swa_lr * g.get("lr_mult", 1.0)
            if self.cycle_epochs:
                per_epoch = trainer.updates_per_epoch()
                i = (j % self.cycle_epochs) * per_epoch + trainer.step_in_epoch + 1
                t = i / (self.cycle_epochs * per_epoch)
                out.append((1 - t) * lr0 + t * swa)
            else:
                step = j if self.anneal_epochs else max(1, j)
                t = max(0.0, min(1.0, step / max(1, self.anneal_epochs)))
                a = _anneal(self.anneal_strategy, t)
                out.append(swa * a + lr0 * (1 - a))
        return out

    def on_epoch_start(self, trainer) -> None:
        if trainer.epoch >= self.start and self.lr0 is None:
            self.lr0 = [float(g["lr"]) for g in trainer.optimizer.param_groups]

    def on_step_start(self, trainer) -> None:
        if self.swa_lr is None or trainer.epoch < self.start:
            return
        if self.lr0 is None:
            self.on_epoch_start(trainer)
        for g, lr in zip(trainer.optimizer.param_groups, self.lrs(trainer)):
            g["lr"] = lr

    # ------------------------------------------------------------------------------------------ the average
    def on_train_epoch_end(self, trainer, record) -> None:
        j = trainer.epoch - self.start                 # trainer.epoch: the epoch just trained, 0-based
        if j < 0 or (self.cycle_epochs and (j + 1) % self.cycle_epochs):
            return
        self.averaged.update_parameters(trainer.model)
        if self.bn == "recompute":
            recompute_bn(self.averaged.module, trainer.inputs(trainer.train_loader),
                         max_batches=self.bn_batches or None)
        trainer.set_eval_model(self.averaged.module)
        record["swa_averaged"] = self.n_averaged

    def on_fit_end(self, trainer, summary) -> None:
        summary["swa_averaged"] = self.n_averaged
        if self.n_averaged and trainer.test_loader is not None:     # the last weights, for comparison
            trainer.set_eval_model(None)
            try:
                last = trainer.evaluate(trainer.test_loader)
            finally:
                trainer.set_eval_model(self.averaged.module)
            summary.update({f"last_weights_test_{k}": v for k, v in last.items()})

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self):
        return {"n_averaged": self.n_averaged, "lr0": self.lr0, "start": self.start}

    def load_state_dict(self, state):
        self.averaged.n_averaged.fill_(int(state["n_averaged"]))
        self.lr0 = None if state["lr0"] is None else [float(v) for v in state["lr0"]]

    def on_save_checkpoint(self, trainer, directory) -> None:
        trainer.save_tensors(self.averaged.module.state_dict(), Path(directory) / "swa.safetensors")

    def on_load_checkpoint(self, trainer, directory) -> None:
        state = trainer.load_tensors(Path(directory) / "swa.safetensors",
                                     missing="the run was started without stochastic weight averaging")
        self.averaged.module.load_state_dict(state)
        if self.n_averaged:
            trainer.set_eval_model(self.averaged.module)

    def __repr__(self) -> str:
        return (f"SWA(swa_start={self.swa_start}, swa_lr={self.swa_lr}, anneal_epochs={self.anneal_epochs}, "
                f"anneal_strategy={self.anneal_strategy!r}, cycle_epochs={self.cycle_epochs}, bn={self.bn!r})")


class CheckpointAverage(Callback):
    """Keep the weights of the evaluated model at the end of the last ``k`` epochs (copies on the CPU) and, when
    training ends, replace them by their average (:func:`average_state_dicts`): floating tensors averaged,
    integer buffers the last epoch's, batch-norm statistics averaged (``bn="average"``) or re-estimated with the
    averaged weights over the training data (``bn="recompute"``). The final test evaluation and the saved model
    are the average's; the summary gains ``checkpoint_average_k`` (epochs averaged) and
    ``last_weights_test_<metric>``. The kept weights are checkpointed (``last_k.safetensors``).

    Args:
        k: epochs to average (>= 1; fewer when the run is shorter or stops early).
        bn: ``"average"`` or ``"recompute"``. bn_batches: batches for ``"recompute"`` (0: all).

    Raises ``ValueError`` for ``k < 1``, an unknown ``bn`` or a negative ``bn_batches``."""

    name = "checkpoint_average"

    def __init__(self, k: int = 5, bn: str = "average", bn_batches: int = 0) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if bn not in ("average", "recompute"):
            raise ValueError(f"bn must be 'average' or 'recompute', got {bn!r}")
        if bn_batches < 0:
            raise ValueError(f"bn_batches must be >= 0 (0: all), got {bn_batches}")
        self.k, self.bn, self.bn_batches = k, bn, bn_batches
        self.kept: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer, record) -> None:
        self.kept.append({n: t.detach().to("cpu", copy=True) for n, t in trainer.eval_model.state_dict().items()})
        del self.kept[:-self.k]

    def on_fit_end(self, trainer, summary) -> None:
        if not self.kept:
            return
        last = {k[5:]: v for k, v in (trainer.history[-1] if trainer.history else {}).items()
                if k.startswith("test_")}
        if not last and trainer.test_loader is not None:
            last = trainer.evaluate(trainer.test_loader)
        summary.update({f"last_weights_test_{k}": v for k, v in last.items()})
        trainer.restore_weights(average_state_dicts(self.kept))
        if self.bn == "recompute":
            recompute_bn(trainer.eval_model, trainer.inputs(trainer.train_loader), max_batches=self.bn_batches or None)
        summary["checkpoint_average_k"] = len(self.kept)

    def state_dict(self):
        return {"count": len(self.kept)}

    def load_state_dict(self, state):
        self.count = int(state["count"])

    def on_save_checkpoint(self, trainer, directory) -> None:
        trainer.save_tensors({f"{i}/{n}": t for i, s in enumerate(self.kept) for n, t in s.items()},
                             Path(directory) / "last_k.safetensors")

    def on_load_checkpoint(self, trainer, directory) -> None:
        flat = trainer.load_tensors(Path(directory) / "last_k.safetensors",
                                    missing="the run was started without checkpoint averaging")
        kept: list[dict[str, torch.Tensor]] = [{} for _ in range(getattr(self, "count", 0))]
        for key, t in flat.items():
            i, _, n = key.partition("/")
            kept[int(i)][n] = t
        self.kept = kept

    def __repr__(self) -> str:
        return f"CheckpointAverage(k={self.k}, bn={self.bn!r})"
