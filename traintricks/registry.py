"""String registries: every technique usable by name from a config lives in one.

A registry maps a name (``"sgd"``, ``"batchnorm"``, ``"onecycle"``) to an :class:`Entry`: the technique's class or
function bound once with its one-line summary and its defaults (a model: timm's ``OptimInfo``). The defaults are
the target's own signature defaults; an entry may bind different values (``defaults=``, e.g. ``inplace=True``) and
expose only some of the target's keyword arguments as options (``options=``). A ``build`` function shared by a
registry may do the building work around the target (range checks, merging parameter groups); a factory that does
real work (a model, a schedule turning epochs into steps) is registered as a function, with its own defaults.

Each category module owns its registry (``traintricks.optim.OPTIMIZERS`` and so on);
:func:`traintricks.catalog.all_registries` gathers them for ``traintricks list``, and :mod:`traintricks.config` derives the config schema from them (an
entry's options, their defaults and their annotations). A new technique is one class or function plus one
``REGISTRY.register("name", ...)``.

This module imports nothing of traintricks (it is the bottom layer: every technique package imports it).
"""
from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

#: arguments a builder passes (model, shapes, class counts, the optimizer, step counts): never config options
BUILDER_ARGS = frozenset({"in_shape", "num_classes", "class_counts", "model", "params", "lr", "optimizer",
                          "total_steps", "steps_per_epoch"})

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _params(target: Callable) -> list[inspect.Parameter]:
    """``target``'s parameters (a class: its constructor's, without ``self``)."""
    ps = list(inspect.signature(target).parameters.values())
    return [p for p in ps if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _hints(target: Callable) -> dict[str, Any]:
    """``target``'s resolved annotations (a class: its constructor's); unresolvable ones are left out."""
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:               # a forward reference the module cannot resolve: keep the resolved ones
        ann = getattr(fn, "__annotations__", {})
        return {k: v for k, v in ann.items() if not isinstance(v, str)}


@dataclass(frozen=True)
class Entry:
    """One registered technique: ``target`` (a class or function) with its summary, the defaults the entry binds
    over the target's own, the options a config may set, and capabilities (``"closure"``, ``"one_group"``...).

    Calling the entry builds the technique: ``build(target, *args, **kwargs)`` when the registry gives a builder,
    else ``target(*args, **kwargs)``, with the bound defaults filled in."""

    name: str
    target: Callable[..., Any]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    exposed: tuple[str, ...] | None = None
    build: Callable[..., Any] | None = None
    capabilities: frozenset[str] = frozenset()
    supplied: frozenset[str] = BUILDER_ARGS

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = {**self.defaults, **kwargs}
        if self.build is not None:
            return self.build(self.target, *args, **kwargs)
        return self.target(*args, **kwargs)

    @property
    def plain(self) -> bool:
        """Whether the entry is its target as it is (no bound defaults, no option subset, no builder)."""
        return not self.defaults and self.exposed is None and self.build is None

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:
        """The target's parameters as the entry builds it: required ones, then the options with the entry's
        defaults (arguments with defaults that are not options are left out)."""
        out = []
        for p in _params(self.target):
            if p.name in self.defaults:
                if p.default is p.empty:        # a value bound for a required argument is fixed, not an option
                    continue
                p = p.replace(default=self.defaults[p.name])
            if p.default is not p.empty and self.exposed is not None and p.name not in self.exposed \
                    and p.name not in self.supplied:
                continue
            out.append(p)
        # a default after a parameter without one must be keyword-only
        seen_default, fixed = False, []
        for p in out:
            if p.default is not p.empty:
                seen_default = True
            elif seen_default and p.kind == p.POSITIONAL_OR_KEYWORD:
                p = p.replace(kind=p.KEYWORD_ONLY)
            fixed.append(p)
        fixed.sort(key=lambda p: p.kind)
        return inspect.Signature(fixed)

    def options(self) -> dict[str, inspect.Parameter]:
        """Keyword options a config may set: parameters with a default, builder-supplied ones left out."""
        return {p.name: p for p in self.__signature__.parameters.values()
                if p.default is not p.empty and p.kind in _KEYWORD and p.name not in self.supplied}

    def annotations(self) -> dict[str, Any]:
        """Each option's type annotation (``inspect.Parameter.empty`` where there is none)."""
        hints = _hints(self.target)
        return {k: hints.get(k, inspect.Parameter.empty) for k in self.options()}

    def option_defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.options().items()}


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Name -> :class:`Entry` mapping with helpful errors.

    >>> R = Registry("optimizer", section="weight update")
    >>> @R.register("plain")
    ... def plain(params, lr: float, momentum: float = 0.0):
    ...     "Plain SGD."
    >>> R.names(), R.summary("plain"), R.defaults("plain")       # params, lr: supplied by the builder
    (['plain'], 'Plain SGD.', {'momentum': 0.0})
    >>> class Clip:
    ...     "Clip every gradient element."
    ...     def __init__(self, clip: float = 1.0, foreach: bool | None = None) -> None: ...
    >>> _ = R.register("clip", Clip, summary="Clip by value.", options=("clip",))
    >>> R.defaults("clip")
    {'clip': 1.0}

    Args:
        kind: what an entry is, singular (``"optimizer"``), for messages.
        section: where the notes put these techniques (``traintricks list`` groups by it).
        plural: plural of ``kind`` when not ``kind + "s"``.
        build: the registry's shared builder ``build(target, *args, **kwargs)`` (checks, argument adaptation)
            for entries registered with ``build=True``.
    """

    def __init__(self, kind: str, section: str = "", plural: str | None = None,
                 build: Callable[..., Any] | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self.section = section
        self.builder = build
        self._items: dict[str, Entry] = {}

    def register(self, name: str, target: Callable[..., Any] | None = None, *, summary: str | None = None,
                 defaults: Mapping[str, Any] | None = None, options: tuple[str, ...] | None = None,
                 build: Callable[..., Any] | bool | None = None, capabilities: tuple[str, ...] = (),
                 supplied: tuple[str, ...] = ()):
        """Register ``target`` (a class or function) under ``name``; usable as a decorator.

        Args:
            summary: one line for ``traintricks list`` (default: the first line of ``target``'s docstring).
            defaults: values this entry binds over ``target``'s own defaults (only where they must differ).
            options: the keyword arguments a config may set (default: every one with a default).
            build: ``build(target, *args, **kwargs)`` doing work around the target; ``True``: the registry's.
            capabilities: flags a builder or a reader may ask for (``entry.capabilities``).
            supplied: more arguments the builder passes (never config options), besides :data:`BUILDER_ARGS`.

        Raises ``ValueError`` for a name registered twice, or ``defaults``/``options`` naming no argument of
        ``target``."""
        key = name.lower()

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            known = {p.name for p in _params(obj)}
            bad = sorted((set(defaults or ()) | set(options or ())) - known)
            if bad:
                raise ValueError(f"{self.kind} {key!r}: {', '.join(bad)} is not an argument of {obj.__qualname__}")
            builder = self.builder if build is True else (build or None)
            self._items[key] = Entry(key, obj, summary if summary is not None else _first_line(obj),
                                     dict(defaults or {}), tuple(options) if options is not None else None,
                                     builder, frozenset(capabilities), BUILDER_ARGS | frozenset(supplied))
            return obj

        return add(target) if target is not None else add

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; ``KeyError`` naming the choices."""
        try:
            return self._items[str(name).lower()]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> Callable[..., Any]:
        """What builds ``name``: its target itself when the entry binds nothing, else the entry (a callable with
        the entry's signature)."""
        e = self.entry(name)
        return e.target if e.plain else e

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted(self._items)

    def summary(self, name: str) -> str:
        """The entry's one-line summary."""
        return self.entry(name).summary

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword options a config may set for ``name`` (with their defaults; builder-supplied ones left out)."""
        return self.entry(name).options()

    def defaults(self, name: str) -> dict[str, Any]:
        """Option -> default of ``name``: what a run takes when the config does not set the option."""
        return self.entry(name).option_defaults()

