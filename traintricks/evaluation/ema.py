"""Exponential moving average of the weights (Polyak & Juditsky 1992, "Acceleration of stochastic approximation by
averaging"; the decaying form used by Tan & Le 2019 and in TensorFlow's ``ExponentialMovingAverage``).

After every optimizer step ``t``:

    theta_ema <- d_t * theta_ema + (1 - d_t) * theta,      d_t = min(decay, (1 + t) / (10 + t)) with warm-up,
                                                          d_t = decay without.

The warm-up keeps the average from being dominated by the random initial weights in short runs. Evaluation uses
``theta_ema``. **Batch-norm statistics**: the running mean and variance in the model were accumulated under the
*live* weights, not the averaged ones, so they do not describe the activations of the EMA model. Three modes:

- ``"recompute"`` (default): before each evaluation, re-estimate them with the EMA weights over ``bn_batches``
  training batches (cumulative average, as in SWA's ``update_bn``; Izmailov et al. 2018, arXiv:1803.05407);
- ``"ema"``: average the buffers like the weights (cheap; what timm's ``ModelEmaV2`` does);
- ``"copy"``: copy the live model's buffers.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..callback import Callback
from .averaging import recompute_bn

BN_MODES = ("recompute", "ema", "copy")


class ModelEMA:
    """An exponential moving average of ``model``'s parameters, held in a copy ``self.module`` (eval only).

    Args:
        model: the model being trained.
        decay: ``d`` in ``[0, 1)``; the average's horizon is about ``1 / (1 - d)`` steps.
        warmup: use ``d_t = min(d, (1 + t) / (10 + t))``.
        bn: ``"recompute"``, ``"ema"`` or ``"copy"`` (see the module docstring).
        bn_batches: training batches for ``"recompute"``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, bn: str = "recompute",
                 bn_batches: int = 20) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        if bn_batches < 1:
            raise ValueError(f"bn_batches must be >= 1, got {bn_batches}")
        self.decay, self.warmup, self.bn, self.bn_batches = decay, warmup, bn, bn_batches
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step after an optimizer step of ``model``."""
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        live_p = [p.detach() for p in model.parameters()]
        floats = [(e, p) for e, p in zip(ema_p, live_p) if e.is_floating_point()]
        if floats:
            # theta_ema <- d theta_ema + (1 - d) theta == theta_ema + (1 - d)(theta - theta_ema)
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            if self.bn == "ema" and e.is_floating_point():
                e.lerp_(b.detach(), 1.0 - d)
            else:
                e.copy_(b)
        self.updates += 1

    @torch.no_grad()
    def recompute_bn(self, batches: Iterable, forward=None, device: torch.device | str | None = None,
                     max_batches: int | None = None) -> int:
        """Re-estimate the EMA model's batch-norm running statistics with its own weights: a cumulative average
        (``momentum=None``) over the batches, as :func:`torch.optim.swa_utils.update_bn` computes it.

        Args:
            batches: any iterable of batches, e.g. a ``torch.utils.data.DataLoader`` or a ``TensorLoader``: each
                batch is the input tensor, or a list/tuple whose first element is (``(x, y)``), as ``update_bn``.
            forward: called on each input instead of the EMA module (e.g. a compiled wrapper of it).
            device: move each input there first (as ``update_bn``'s ``device``).
            max_batches: at most this many batches (default ``bn_batches``; ``update_bn`` uses all of them).

        Returns the number of batches used (0, and nothing changed, for a model without batch norm)."""
        return recompute_bn(self.module, batches, forward, device,
                            self.bn_batches if max_batches is None else max_batches)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = int(updates)

    def __repr__(self) -> str:
        return f"ModelEMA(decay={self.decay}, warmup={self.warmup}, bn={self.bn!r}, bn_batches={self.bn_batches})"


class EMACallback(Callback):
    """:class:`ModelEMA` in the training loop: the average is updated after every optimizer step, its batch-norm
    statistics are recomputed (``bn="recompute"``) before each evaluation, it is the model the trainer evaluates
    and saves, and it is checkpointed (``ema.safetensors`` and its update count).

    Args:
        ema: the :class:`ModelEMA` (of the trainer's model).
    """

    name = "ema"

    def __init__(self, ema: ModelEMA) -> None:
        self.ema = ema

    def setup(self, trainer) -> None:
        if trainer.eval_model is not trainer.model and trainer.eval_model is not self.ema.module:
            raise ValueError("ema: another callback (SWA?) is already the evaluated model; use one weight average")
        self.ema.module.to(trainer.device)
        if trainer.memory_format is not None:
            self.ema.module.to(memory_format=trainer.memory_format)
        trainer.set_eval_model(self.ema.module)

    def on_after_optimizer_step(self, trainer) -> None:
        self.ema.update(trainer.model)

    def on_train_epoch_end(self, trainer, record) -> None:
        if self.ema.bn == "recompute":
            self.ema.recompute_bn(trainer.inputs(trainer.train_loader))

    def state_dict(self):
        return {"updates": self.ema.updates}

    def load_state_dict(self, state):
        self.ema.updates = int(state["updates"])

    def on_save_checkpoint(self, trainer, directory) -> None:
        trainer.save_tensors(self.ema.state_dict(), Path(directory) / "ema.safetensors")

    def on_load_checkpoint(self, trainer, directory) -> None:
        state = trainer.load_tensors(Path(directory) / "ema.safetensors",
                                     missing="the run was started without a weight EMA")
        self.ema.load_state_dict(state, self.ema.updates)

    def __repr__(self) -> str:
        return f"EMACallback({self.ema!r})"
