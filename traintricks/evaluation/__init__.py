"""Evaluation (notes: *Evaluation*): early stopping and metrics."""
from .early_stopping import EARLY_STOPPING, EarlyStopping
from .metrics import accuracy, correct_count

__all__ = ["EARLY_STOPPING", "EarlyStopping", "accuracy", "correct_count"]
