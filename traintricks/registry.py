"""String registries: every technique usable by name from a config lives in one.

A registry maps a name (``"sgd"``, ``"batchnorm"``, ``"onecycle"``) to a factory. Each
category module owns its registry (``traintricks.optim.OPTIMIZERS`` and so on);
:func:`traintricks.catalog.all_registries` gathers them for ``traintricks list``. A new technique is one
factory plus one ``@REGISTRY.register("name")`` line. This module imports nothing of traintricks (it is the bottom
layer: every technique package imports it).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator


class Registry:
    """Name -> factory mapping with helpful errors.

    >>> R = Registry("optimizer", section="weight update")
    >>> @R.register("plain")
    ... def plain(params, lr: float = 0.1):
    ...     "Plain SGD."
    >>> R.names()
    ['plain']
    """

    def __init__(self, kind: str, section: str = "", plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self.section = section
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, obj: Callable[..., Any] | None = None):
        """Register ``obj`` under ``name``; usable as a decorator."""
        key = name.lower()

        def add(o: Callable[..., Any]) -> Callable[..., Any]:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[str(name).lower()]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted(self._items)

    def summary(self, name: str) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword options a config may set for ``name`` (parameters with defaults)."""
        sig = inspect.signature(self.get(name))
        return {
            p.name: p
            for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

