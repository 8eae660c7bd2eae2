"""Models from the user's own code: ``model.name = "pkg.module:factory"``, and ``"timm:<model>"`` when timm is
installed.

An import path names a module and, after the colon, an attribute of it (dots reach nested attributes:
``"pkg.models:Zoo.small"``): an ``nn.Module`` class or any callable returning an ``nn.Module``. It is called with
the model table's other keys as keyword arguments, plus the builder-supplied ``in_shape`` (one example's shape,
``(C, H, W)`` or ``(C, L)``, a tuple of ints) and ``num_classes`` (an int) only where its signature names them.
Its options are read from its signature, like a registered model's: every other keyword parameter, with its
default (``traintricks config`` prints them) and its annotation (checked by the config); a parameter without a
default must be set in the config (``model.<name>``); a factory taking ``**kwargs`` accepts any further key,
passed on unchecked.

``"timm:resnet18"`` builds ``timm.create_model("resnet18", num_classes=num_classes, in_chans=in_shape[0],
**options)``; timm is an optional extra (``pip install timm``; to keep the pinned CPU torch:
``pip install --no-deps timm huggingface_hub pyyaml`` plus a torchvision built for the same torch).

Every problem is found when the config is validated, before any data is loaded, and raised as
:class:`ModelImportError` (a ``KeyError``, the registries' error for an unknown name; the config reports it
under ``model.name``): a module that cannot be imported, no such attribute, not callable, a class that is not
an ``nn.Module``, timm missing or not knowing the model. A factory that returns something other than an
``nn.Module`` is refused when the model is built (``ConfigError`` naming ``model.name``).
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..registry import Entry, Registry

#: what the builder supplies to an imported factory whose signature names them (never config options)
SUPPLIED = frozenset({"in_shape", "num_classes"})

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class ModelImportError(KeyError):
    """``model.name`` is an import path (or ``timm:<name>``) that cannot give a model; the message says why."""

    def __str__(self) -> str:            # the message itself, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


def is_import_path(name: object) -> bool:
    """Whether a ``model.name`` is an import path (``"pkg.module:factory"`` or ``"timm:<model>"``)."""
    return isinstance(name, str) and ":" in name


@dataclass(frozen=True)
class ImportedEntry(Entry):
    """A factory from the user's code as a registry entry: its options are all its keyword parameters except
    the supplied ones, ``required`` those without a default (the config must set them), ``open_keywords``
    whether it takes ``**kwargs`` (further keys are passed on unchecked)."""

    required: tuple[str, ...] = ()
    open_keywords: bool = False

    def options(self) -> dict[str, inspect.Parameter]:
        params = inspect.signature(self.target).parameters.values()
        return {p.name: p for p in params if p.kind in _KEYWORD and p.name not in self.supplied}

    def option_defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.options().items() if p.default is not p.empty}


def _signature(name: str, target: Callable) -> inspect.Signature:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError) as e:
        raise ModelImportError(f"model {name!r}: cannot read the signature of {target!r} ({e}); wrap it in a "
                               "Python function taking keyword options") from None


def _entry(name: str, target: Callable, summary: str, supplied: frozenset[str] = SUPPLIED) -> ImportedEntry:
    params = _signature(name, target).parameters.values()
    required = tuple(p.name for p in params if p.kind in _KEYWORD and p.default is p.empty
                     and p.name not in supplied)
    positional = [p.name for p in params if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    if positional:
        raise ModelImportError(f"model {name!r}: its required positional-only parameters ({', '.join(positional)}) "
                               "cannot be given by keyword; wrap it in a function taking keyword options")
    return ImportedEntry(name, target, summary, supplied=supplied, required=required,
                         open_keywords=any(p.kind == p.VAR_KEYWORD for p in params))


def _import_module(name: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModelImportError(f"model {name!r}: no module named {module_name!r} on the Python path (put its "
                                   "directory on PYTHONPATH, or run from the directory that holds it)") from None
        raise ModelImportError(f"model {name!r}: importing module {module_name!r} failed: "
                               f"{type(e).__name__}: {e} (a dependency of that module is missing)") from None
    except Exception as e:                     # noqa: BLE001 - user code failing at import: say so, with its error
        raise ModelImportError(f"model {name!r}: importing module {module_name!r} failed: "
                               f"{type(e).__name__}: {e}") from None


def import_entry(name: str) -> ImportedEntry:
    """The entry of an import path ``"pkg.module:factory"`` (or ``"timm:<model>"``); raises
    :class:`ModelImportError` saying what is wrong (see the module's docstring)."""
    module_name, _, attr = name.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if module_name == "timm":
        return _timm_entry(name, attr)
    if not module_name or not attr:
        raise ModelImportError(f"model {name!r}: an import path is 'pkg.module:factory' (the module, a colon, "
                               "then the class or function that builds the model)")
    module = _import_module(name, module_name)
    target: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError:
            where = module_name + "".join("." + p for p in attr.split(".")[:i])
            raise ModelImportError(f"model {name!r}: {where} ({getattr(module, '__file__', '?')}) has no attribute "
                                   f"{part!r}") from None
    if not callable(target):
        raise ModelImportError(f"model {name!r}: {attr} is a {type(target).__name__}, not a class or function "
                               "building an nn.Module")
    if inspect.isclass(target) and not issubclass(target, torch.nn.Module):
        raise ModelImportError(f"model {name!r}: class {target.__qualname__} is not a torch.nn.Module")
    doc = (inspect.getdoc(target) or "").strip()
    return _entry(name, target, doc.splitlines()[0] if doc else f"{attr} from {module_name}")


def _timm_entry(name: str, model: str) -> ImportedEntry:
    try:
        import timm
    except ModuleNotFoundError:
        raise ModelImportError(f"model {name!r} needs timm, which is not installed: pip install timm (to keep the "
                               "pinned CPU torch: pip install --no-deps timm huggingface_hub pyyaml, with a "
                               "torchvision built for the same torch)") from None
    if not model or not timm.is_model(model):
        raise ModelImportError(f"model {name!r}: timm has no model {model!r} (see timm.list_models())")

    def create(in_shape: Sequence[int], num_classes: int, **options: Any) -> torch.nn.Module:
        return timm.create_model(model, num_classes=num_classes, in_chans=int(in_shape[0]), **options)

    return _entry(name, create, f"timm model {model} (timm.create_model)")


class ModelRegistry(Registry):
    """The models' registry: registered names, and import paths resolved on lookup (:func:`import_entry`).
    Only registered names are listed (``names()``, ``traintricks list``)."""

    def entry(self, name: str) -> Entry:
        if is_import_path(name):
            return import_entry(name)
        try:
            return super().entry(name)
        except KeyError as e:
            raise ModelImportError(f"{str(e).strip(chr(34))}; or your own model as an import path "
                                   "'pkg.module:factory' (or 'timm:<model>' with timm installed)") from None
