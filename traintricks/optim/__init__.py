"""Weight update (notes: *Weight Update*): optimizers, learning-rate schedules, gradient transforms.

| file | what |
|---|---|
| ``first_order.py`` | :class:`SGD` (momentum, Nesterov), :class:`Adagrad`, :class:`RMSprop`, :class:`Adam`, :class:`AdamW` |
| ``large_batch.py`` | :class:`LARS`, :class:`LAMB` |
| ``hypergradient.py`` | :class:`SGDHD`, :class:`AdamHD` |
| ``lookahead.py`` | :class:`Lookahead`, wrapping any optimizer (slow and fast weights) |
| ``second_order.py`` | :class:`Newton`, :class:`SaddleFreeNewton` (Hessian-vector products) |
| ``schedules.py`` | :class:`StepLR`, :class:`ExponentialLR`, :class:`ConstantLR`, :class:`Warmup` (chainable); :class:`CosineRestarts`, :class:`Cyclic`, :class:`OneCycle`, :class:`MultiCycle` (closed-form owners); :class:`BatchSizeSchedule`, :func:`scale_lr`; the config names (:data:`SCHEDULES`) |
| ``transforms.py`` | :class:`ClipByValue`, :class:`ClipByGlobalNorm`, :class:`AdaptiveClip`, :class:`GradientNoise`, :class:`Chain` |
| ``lr_find.py`` | :func:`lr_find`, the learning-rate range test |

By name: :data:`OPTIMIZERS` factories take ``(param_groups, lr, **options)``; :data:`SCHEDULES` factories take
``(optimizer, total_steps, steps_per_epoch, **options)`` and return per-step schedules; :data:`TRANSFORMS`
(config ``grad_transforms``) build the chain the trainer applies between backward and step;
:data:`OPTIMIZER_WRAPPERS` (config ``optim.wrappers``) wrap the built optimizer (``lookahead``).
:func:`param_groups` splits parameters so that weight decay skips normalization and bias parameters
(He et al. 2018, arXiv:1812.01187) and gives layer-wise learning rates by name rules or layer decay.
"""
from .first_order import SGD, Adagrad, Adam, AdamW, RMSprop
from .hypergradient import AdamHD, SGDHD
from .large_batch import LAMB, LARS
from .schedules import (SCHEDULES, BatchSizeLR, BatchSizeSchedule, ClosedFormLR, ConstantLR, CosineRestarts,
                           Cyclic, ExponentialLR, MultiCycle, OneCycle, StepLR, Warmup, scale_lr, sets_rate_each_step)
from .lookahead import Lookahead
from .optimizers import OPTIMIZER_WRAPPERS, OPTIMIZERS, param_groups
from .second_order import Newton, SaddleFreeNewton
from .transforms import TRANSFORMS, AdaptiveClip, Chain, ClipByGlobalNorm, ClipByValue, GradientNoise

__all__ = ["OPTIMIZERS", "OPTIMIZER_WRAPPERS", "Lookahead", "SCHEDULES", "TRANSFORMS", "param_groups", "SGD", "Adagrad", "Adam", "AdamW", "RMSprop",
           "LARS", "LAMB", "SGDHD", "AdamHD", "Newton", "SaddleFreeNewton", "StepLR", "ExponentialLR",
           "ConstantLR", "CosineRestarts", "Warmup", "Cyclic", "OneCycle", "MultiCycle", "BatchSizeSchedule", "BatchSizeLR",
           "ClosedFormLR", "scale_lr", "sets_rate_each_step",
           "ClipByValue", "ClipByGlobalNorm", "AdaptiveClip", "GradientNoise", "Chain"]
