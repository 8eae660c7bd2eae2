"""Weight update (notes: *Weight Update*): optimizers and learning-rate schedules by name.

:data:`OPTIMIZERS` factories take ``(param_groups, lr, **options)`` and return a
``torch.optim.Optimizer``; :data:`SCHEDULES` factories take
``(optimizer, total_steps, steps_per_epoch, **options)`` and return a per-step
``torch.optim.lr_scheduler.LRScheduler``. :func:`param_groups` splits parameters so that
weight decay skips normalization and bias parameters (He et al. 2018, arXiv:1812.01187).
"""
from .optimizers import OPTIMIZERS, param_groups
from .schedules import SCHEDULES

__all__ = ["OPTIMIZERS", "SCHEDULES", "param_groups"]
