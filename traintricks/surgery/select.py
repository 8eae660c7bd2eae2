"""Choosing modules of any model: the ``where`` argument of the surgeries.

A selector is one of:

- a module class or tuple of classes: every module that is an instance (``nn.Linear``);
- a callable ``(name, module) -> bool`` on the qualified name (``"layer4.1.conv2"``, ``""`` for the root);
- a string: ``"type:Linear"`` (a class name, matched against the module's class and its bases, so torch's and
  ours both match ``type:BatchNorm2d``), otherwise a glob on the qualified name (``"layer4.*"``, ``"head"``,
  ``"blocks.*.mlp.fc2"``; :mod:`fnmatch` rules, ``*`` matches dots too);
- ``"first:<selector>"`` / ``"last:<selector>"``: only the first / last match in the model's module order
  (``model.named_modules()``, which is the order of construction; ``"last:type:Linear"`` is the classifier head
  of most networks).

TOML configs use the string forms.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Union

from torch import nn

Selector = Union[type, tuple, str, Callable[[str, nn.Module], bool]]


def _matcher(where: Selector) -> Callable[[str, nn.Module], bool]:
    if isinstance(where, type) or (isinstance(where, tuple) and where and all(isinstance(t, type) for t in where)):
        return lambda _name, m: isinstance(m, where)
    if isinstance(where, str):
        if not where:
            raise ValueError("an empty selector selects nothing: give a class, a name pattern or 'type:<Class>'")
        if where.startswith("type:"):
            cls_name = where[len("type:"):]
            return lambda _name, m: any(c.__name__ == cls_name for c in type(m).__mro__)
        return lambda name, _m: fnmatch.fnmatchcase(name, where)
    if callable(where):
        return lambda name, m: bool(where(name, m))
    raise TypeError(f"a selector is a module class, a string or a callable (name, module) -> bool, got "
                    f"{type(where).__name__}")


def select(model: nn.Module, where: Selector) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs of ``model`` that ``where`` selects, in ``named_modules()`` order
    (each module once). Raises ``TypeError`` for a selector of another type, ``ValueError`` for an empty string."""
    which = None
    if isinstance(where, str) and where.split(":", 1)[0] in ("first", "last") and ":" in where:
        which, where = where.split(":", 1)
    match = _matcher(where)
    found = [(name, m) for name, m in model.named_modules() if match(name, m)]
    if which == "first":
        return found[:1]
    if which == "last":
        return found[-1:]
    return found


def describe(where: Selector) -> str:
    """A selector in words, for reports and errors."""
    if isinstance(where, type):
        return f"modules of type {where.__name__}"
    if isinstance(where, tuple):
        return "modules of type " + " or ".join(t.__name__ for t in where)
    if isinstance(where, str):
        return f"modules matching {where!r}"
    return f"modules selected by {getattr(where, '__name__', repr(where))}"
