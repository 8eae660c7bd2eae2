"""Training: the :class:`Trainer` (the loop and its events), its built-in callbacks, checkpoints, reports, and
building a run from a config. The :class:`~traintricks.callback.Callback` base lives in :mod:`traintricks.callback`."""
from ..callback import Callback
from .callbacks import CALLBACKS, NonFiniteLossError
from .checkpoint import CheckpointError
from .recipe import RunExistsError, build_trainer, run
from .trainer import Trainer

__all__ = ["Callback", "CALLBACKS", "Trainer", "NonFiniteLossError", "CheckpointError", "RunExistsError",
           "build_trainer", "run"]
