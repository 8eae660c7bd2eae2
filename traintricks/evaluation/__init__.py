"""Evaluation (notes: *Evaluation*): early stopping, metrics and tasks; weight EMA and weight averaging (SWA,
checkpoint averaging)."""
from .averaging import SWA, AveragedModel, CheckpointAverage, average_state_dicts, recompute_bn
from .early_stopping import EARLY_STOPPING, EarlyStopping, GeneralizationLoss, ProgressQuotient, UpStrips
from .ema import ModelEMA
from .metrics import accuracy, correct_count, expected_calibration_error, reliability
from .tasks import (TASKS, Classification, MultiLabel, Regression, Task, default_loss, get_task, loss_for_task,
                    resolve_task)

__all__ = ["SWA", "AveragedModel", "CheckpointAverage", "average_state_dicts", "recompute_bn", "EARLY_STOPPING", "EarlyStopping", "GeneralizationLoss", "ModelEMA", "ProgressQuotient", "UpStrips", "accuracy", "correct_count", "expected_calibration_error", "reliability", "TASKS", "Task", "Classification", "Regression", "MultiLabel",
           "get_task", "resolve_task", "default_loss", "loss_for_task"]
