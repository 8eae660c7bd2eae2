"""The :class:`Callback` base: how a technique plugs into the training loop.

The :class:`~traintricks.training.Trainer` runs a short loop and calls its callbacks at the events below, in
the order they are listed (see ``docs/architecture.md`` for one step's path). A technique overrides the events
it needs and keeps its own state in :meth:`Callback.state_dict`, which the trainer saves in every checkpoint
under the callback's :attr:`Callback.name`, so a resumed run continues every technique exactly where it was.

Events (``trainer`` is the running :class:`~traintricks.training.Trainer`; the step's data are its attributes:
``trainer.batch`` (inputs, targets, extras) of the current micro-batch, ``trainer.outputs`` (the model's raw
outputs), ``trainer.loss`` (the micro-batch's scalar loss, a tensor; from the optimizer step on, the last micro-batch's, detached), ``trainer.epoch`` (epochs completed),
``trainer.step_in_epoch`` and ``trainer.global_step`` (optimizer steps done)):

=============================== ============================================================================
``setup(trainer)``              once, when the trainer is built: move state to the device, claim a role
                                (e.g. the weight EMA becomes the evaluated model)
``on_fit_start(trainer)``       :meth:`Trainer.fit` begins (also when it resumes)
``on_epoch_start(trainer)``     before the epoch's first batch; also when a run resumes inside the epoch
                                (then ``trainer.step_in_epoch > 0``: do not reset what the checkpoint restored)
``on_step_start(trainer)``      a group of ``accumulate_steps`` micro-batches begins (``trainer.micro_batches``)
``on_before_forward(trainer)``  a training micro-batch is on the device (``trainer.batch``), before its forward
                                pass: a callback may replace ``trainer.batch`` (the loop reads it back), e.g.
                                adversarial inputs or a smaller image size; evaluation batches do not pass here
``on_after_forward(trainer)``   a micro-batch's outputs and loss exist (``trainer.outputs``, ``trainer.loss``)
``on_before_backward(trainer)`` the micro-batch's (weighted) loss is about to be differentiated
``on_after_backward(trainer)``  its gradients are accumulated into ``.grad``
``on_before_optimizer_step``    ``(trainer, params)``: the step's gradients are final (transforms go here)
``on_after_optimizer_step``     ``(trainer)``: the weights moved (averaging, per-step schedules)
``on_step_end(trainer)``        the optimizer step is complete (periodic checkpoints)
``on_train_epoch_end``          ``(trainer, record)``: the epoch's training is done, before evaluation
``on_eval_outputs``             ``(trainer, inputs, outputs) -> outputs``: change the evaluated predictions
                                (test-time augmentation); return ``None`` to keep them
``on_evaluate``                 ``(trainer, split, metrics)``: ``split`` ("val"/"test") was evaluated
``on_epoch_end(trainer, record)`` the epoch's record is complete (stop decisions, logging, checkpoints)
``on_fit_end(trainer, summary)`` training is over, before the final test evaluation (put best weights back
                                with ``trainer.restore_weights``)
``on_save_checkpoint``          ``(trainer, directory)``: write extra files into the checkpoint being written
``on_load_checkpoint``          ``(trainer, directory)``: read them back (after :meth:`load_state_dict`)
``on_exception(trainer, exc)``  an exception leaves :meth:`Trainer.fit` (the run's record is still written)
=============================== ============================================================================

On the closure path (second-order optimizers, ``optimizer.needs_closure``) the optimizer differentiates the loss
itself inside ``step``: ``on_before_backward``/``on_after_backward`` do not fire and ``on_before_optimizer_step``
sees no gradients yet (gradient transforms go to the optimizer's ``grad_transform`` hook);
``on_after_optimizer_step`` sees the step's gradient. The closure's first call returns the loss of the loop's own
forward pass, with its graph (the optimizer's evaluation at the current weights repeats no pass, and batch-norm
statistics move once); later calls run the forward pass again.

This module imports nothing of traintricks: any layer may define a callback.
"""
from __future__ import annotations

from typing import Any

EVENTS = ("setup", "on_fit_start", "on_epoch_start", "on_step_start", "on_before_forward", "on_after_forward",
          "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_after_optimizer_step", "on_step_end",
          "on_train_epoch_end", "on_eval_outputs", "on_evaluate", "on_epoch_end", "on_fit_end",
          "on_save_checkpoint", "on_load_checkpoint", "on_exception")


class Callback:
    """Base class of the training loop's plug-ins: override the events you need (every one is a no-op here).

    Attributes:
        name: the stable key of the callback's state in a checkpoint (default: the class name). Two callbacks
            of one trainer must have different names.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this callback exactly: tensors and plain Python values only
        (checkpoints are loaded with ``torch.load(weights_only=True)``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    def setup(self, trainer: Any) -> None: ...
    def on_fit_start(self, trainer: Any) -> None: ...
    def on_epoch_start(self, trainer: Any) -> None: ...
    def on_step_start(self, trainer: Any) -> None: ...
    def on_before_forward(self, trainer: Any) -> None: ...
    def on_after_forward(self, trainer: Any) -> None: ...
    def on_before_backward(self, trainer: Any) -> None: ...
    def on_after_backward(self, trainer: Any) -> None: ...
    def on_before_optimizer_step(self, trainer: Any, params: list) -> None: ...
    def on_after_optimizer_step(self, trainer: Any) -> None: ...
    def on_step_end(self, trainer: Any) -> None: ...
    def on_train_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None: ...
    def on_eval_outputs(self, trainer: Any, inputs: Any, outputs: Any) -> Any: ...
    def on_evaluate(self, trainer: Any, split: str, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Any, summary: dict[str, Any]) -> None: ...
    def on_save_checkpoint(self, trainer: Any, directory: Any) -> None: ...
    def on_load_checkpoint(self, trainer: Any, directory: Any) -> None: ...
    def on_exception(self, trainer: Any, exc: BaseException) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def overrides(cb: Callback, event: str) -> bool:
    """Whether ``cb`` defines ``event`` (the trainer calls only those, so an unused event costs nothing)."""
    return getattr(type(cb), event, None) is not getattr(Callback, event)
