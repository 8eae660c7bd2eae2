"""Exceptions shared across the package, and its warnings' helper (``warn``: attributed to the user's code)."""
from __future__ import annotations

import os
import sys
import warnings


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep      # traintricks/, whose frames warn skips


class NonFiniteInputError(ValueError):
    """A layer or loss was given NaN or infinite values. The trainer reports it as divergence, like a NaN loss."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside traintricks: the line of the user's code (or the
    interpreter's entry point under the CLI) that led to the warning, whatever depth of the library raised it, so
    that the warning names the user's own call and ``-W``/``filterwarnings`` by module work as expected. (Python 3.12's
    ``skip_file_prefixes``, by hand for 3.11.)"""
    frame, level = sys._getframe(1), 2            # level 2: warn's own caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
