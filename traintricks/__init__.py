"""traintricks: the techniques of training deep networks, from their math, verified, fast, on PyTorch.

Layout follows the course notes:

- forward pass: :mod:`traintricks.nn` (normalization, regularization layers), :mod:`traintricks.losses`
- backward pass: memory-saving techniques (later issues)
- weight update: :mod:`traintricks.optim` (optimizers, schedules)
- evaluation: :mod:`traintricks.evaluation` (early stopping, metrics)
- plus :mod:`traintricks.data`, :mod:`traintricks.models`, :mod:`traintricks.training` and the CLI.
"""
from .config import ConfigError, default_config, load_config
from .training import Trainer, build_trainer, run
from .training.inference import LoadedRun, load_run

__version__ = "0.1.0"
__all__ = ["ConfigError", "LoadedRun", "Trainer", "build_trainer", "default_config", "load_config", "load_run", "run",
           "__version__"]
