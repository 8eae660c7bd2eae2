"""Training: the :class:`Trainer`, checkpoints, reports, and building a run from a config."""
from .checkpoint import CheckpointError
from .recipe import RunExistsError, build_trainer, run
from .trainer import NonFiniteLossError, Trainer

__all__ = ["Trainer", "NonFiniteLossError", "CheckpointError", "RunExistsError", "build_trainer", "run"]
