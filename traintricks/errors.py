"""Exceptions shared across the package."""
from __future__ import annotations


class NonFiniteInputError(ValueError):
    """A layer or loss was given NaN or infinite values. The trainer reports it as divergence, like a NaN loss."""
