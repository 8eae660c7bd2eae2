"""Evaluation (notes: *Evaluation*): early stopping, metrics and tasks."""
from .early_stopping import EARLY_STOPPING, EarlyStopping, GeneralizationLoss, ProgressQuotient, UpStrips
from .ema import ModelEMA
from .metrics import accuracy, correct_count, expected_calibration_error, reliability
from .tasks import (TASKS, Classification, MultiLabel, Regression, Task, default_loss, get_task, loss_for_task,
                    resolve_task)

__all__ = ["EARLY_STOPPING", "EarlyStopping", "GeneralizationLoss", "ModelEMA", "ProgressQuotient", "UpStrips", "accuracy", "correct_count", "expected_calibration_error", "reliability", "TASKS", "Task", "Classification", "Regression", "MultiLabel",
           "get_task", "resolve_task", "default_loss", "loss_for_task"]
