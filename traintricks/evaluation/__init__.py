"""Evaluation (notes: *Evaluation*): early stopping and metrics."""
from .early_stopping import EARLY_STOPPING, EarlyStopping
from .metrics import accuracy

__all__ = ["EARLY_STOPPING", "EarlyStopping", "accuracy"]
