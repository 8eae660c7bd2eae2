"""Changing what a module does in place by swapping its class: ``module.__class__ = Mixin.subclass(type(module))``.

The module object, its attributes, parameters, buffers, hooks and ``state_dict`` keys stay as they were; only its
``forward`` (and whatever the mixin overrides) changes, and ``isinstance(module, OriginalClass)`` still holds.
Stochastic depth in the paper's form (:mod:`traintricks.nn.stochastic_depth`) and gradient checkpointing of a
block (:mod:`traintricks.surgery.checkpointing`) are such mixins.
"""
from __future__ import annotations

from torch import nn


def _rebuild(mixin: type, base: type) -> nn.Module:
    """Unpickling: an empty instance of ``mixin``'s subclass of ``base`` (its state is set afterwards)."""
    return object.__new__(mixin.subclass(base))


class ClassSwapMixin:
    """Base of the mixins: ``subclass(base)`` is the class ``<prefix><Base>`` of ``(mixin, base)``, made once per
    base class; ``base_class`` is the module's original class; pickling and ``copy.deepcopy`` rebuild the instance
    through the original class (which pickles by name), so a swapped module saves and copies like any other.

    A mixin sets ``prefix`` (the new class's name prefix)."""

    prefix = "Swapped"
    base_class: type = nn.Module

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "base_class" not in cls.__dict__:      # a mixin (not one of its made subclasses): its own cache
            cls._subclasses = {}

    @classmethod
    def subclass(cls, base: type) -> type:
        made = cls._subclasses.get(base)
        if made is None:
            name = f"{cls.prefix}{base.__name__}"
            made = type(name, (cls, base), {"base_class": base, "__module__": cls.__module__, "__qualname__": name})
            cls._subclasses[base] = made
        return made

    @classmethod
    def mixin(cls) -> type:
        """The mixin this class was made from (itself for the mixin)."""
        return next(c for c in cls.__mro__ if "_subclasses" in c.__dict__)

    def __reduce_ex__(self, protocol):
        reduced = super().__reduce_ex__(protocol)
        return (_rebuild, (type(self).mixin(), type(self).base_class)) + tuple(reduced[2:])
