"""The catalogue of techniques: every registry, in the order of the notes.

Assembly-level (the recipe layer, beside :mod:`traintricks.config`): it imports every technique package, so that
:mod:`traintricks.registry` itself imports none (see ``docs/architecture.md``). Used by ``traintricks list``.
"""
from __future__ import annotations

from .data import AUGMENTATIONS, CURRICULA, DATASETS
from .evaluation import EARLY_STOPPING, TASKS
from .losses import LOSSES, PENALTIES
from .models import MODELS, REGULARIZERS
from .nn import ACTIVATIONS, NORMS
from .optim import OPTIMIZER_WRAPPERS, OPTIMIZERS, SCHEDULES, TRANSFORMS
from .registry import Registry
from .training.callbacks import CALLBACKS


def all_registries() -> list[Registry]:
    """Every registry, in the order of the notes: forward pass, backward pass, weight update, evaluation."""
    return [NORMS, ACTIVATIONS, REGULARIZERS, AUGMENTATIONS, LOSSES, PENALTIES, OPTIMIZERS, OPTIMIZER_WRAPPERS, SCHEDULES, TRANSFORMS,
            EARLY_STOPPING, TASKS, CALLBACKS, CURRICULA, MODELS, DATASETS]
