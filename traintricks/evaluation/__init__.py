"""Evaluation (notes: *Evaluation*): early stopping and metrics."""
from .early_stopping import EARLY_STOPPING, EarlyStopping, GeneralizationLoss, ProgressQuotient, UpStrips
from .ema import ModelEMA
from .metrics import accuracy, correct_count, expected_calibration_error, reliability
from .tasks import TASKS, Classification, Task, get_task

__all__ = ["EARLY_STOPPING", "EarlyStopping", "GeneralizationLoss", "ModelEMA", "ProgressQuotient", "UpStrips", "accuracy", "correct_count", "expected_calibration_error", "reliability", "TASKS", "Task", "Classification", "get_task"]
