"""Run configuration: TOML files, ``--set key=value`` overrides, validation that names the key.

A config is a nested dict. Top-level keys (``epochs``, ``lr``, ...) and the ``data``/``eval``
tables have fixed schemas. The *component* tables ``model``, ``optim``, ``schedule``, ``loss``
and ``early_stopping`` hold a ``name`` chosen from a registry plus that component's options,
which are checked against the registered factory's signature and type annotations, so a new
technique's options become valid config keys by registering it.

Layers merge in order: defaults, the config file, then each ``--set``. When a layer changes a
component's ``name``, the options written by lower layers for the old component are dropped
(options belong to the component they were written for).
"""
from __future__ import annotations

import collections.abc
import copy
import inspect
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable

from .registry import Registry


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}")


# The default recipe: trains a small CNN on Fashion-MNIST to about 93% test accuracy in under five
# minutes on 2 CPU cores (docs/benchmarks.md). Component options not listed take the factory's defaults.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "epochs": 25,
    "batch_size": 256,
    "lr": 0.2,
    "device": "cpu",
    "precision": "auto",
    "channels_last": True,
    "compile": False,
    "threads": 0,
    # what the run predicts: "auto" = the dataset's task (classification for the default recipe), or a name from
    # traintricks.evaluation.tasks.TASKS (classification, regression, multilabel)
    "task": "auto",
    # the default recipe: a first one-cycle of 5 epochs on plain images gives ~92.5% in under a minute, a second of
    # 20 epochs with crop + flip (and flip TTA) continues to ~93.3% (docs/benchmarks.md); 1/30 of the training
    # images (2,000 of Fashion-MNIST) for validation. Pooling before the norm makes the full-resolution stage's
    # norm and activation 4x cheaper (models/cnn.py).
    "data": {"name": "fashion_mnist", "root": "", "limit": 0, "val_size": 0.0333, "augment": ["crop", "flip"],
             "augment_from_epoch": 5},
    "model": {"name": "cnn", "widths": [16, 32, 64], "blocks": [1, 2, 2], "pool_before_norm": True},
    "optim": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "decay_norm_and_bias": False},
    # min_warmup_steps: a cycle too short to warm up over 15 optimizer steps peaks lower (optim/schedules.py), so
    # short runs (--set data.limit=...) learn; the full run's cycles warm up over hundreds of steps, unchanged
    "schedule": {"name": "multicycle", "cycle_epochs": [5, 20], "peaks": [1.0, 0.5], "min_warmup_steps": 15},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
    "early_stopping": {"name": "none"},
    "curriculum": {"name": "none"},
    "eval": {"tta_flip": True, "test_every_epoch": True},
    "grad_transforms": [],
    "accumulate_steps": 1,
    "checkpoint_every_steps": 0,
    "checkpoint_every_seconds": 0.0,
    "parallel": {"mode": "sync", "workers": 2, "sync_batchnorm": False, "dc_lambda": 0.0},
    "ema": {"decay": 0.0, "warmup": True, "bn": "recompute", "bn_batches": 20},
    "bag_of_tricks": False,
}

# fixed keys: type and a check returning an error message or None
_pos = lambda v: None if v > 0 else "must be positive"  # noqa: E731
_nonneg = lambda v: None if v >= 0 else "must be >= 0"  # noqa: E731


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _task(v: str) -> str | None:
    from .evaluation.tasks import TASKS       # imported when checked: config imports no registry at module level
    return None if v == "auto" or v in TASKS else f"must be auto or one of {', '.join(TASKS.names())}"


_FIXED: dict[str, tuple[Any, Callable[[Any], str | None] | None]] = {
    "seed": (int, _nonneg),
    "epochs": (int, _pos),
    "batch_size": (int, _pos),
    "lr": (float, _pos),
    "device": (str, lambda v: None if v in ("cpu", "auto") or v.startswith("cuda") else "must be cpu, cuda[:N] or auto"),
    "precision": (str, _choice("fp32", "bf16", "auto")),
    "channels_last": (bool, None),
    "compile": (bool, None),
    "threads": (int, _nonneg),
    "task": (str, _task),
    "data.name": (str, None),
    "data.root": (str, None),
    "data.limit": (int, _nonneg),
    "data.val_size": (float, _nonneg),
    "data.augment": (list, None),
    "data.augment_from_epoch": (int, _nonneg),
    "grad_transforms": (list, None),
    "eval.tta_flip": (bool, None),
    "eval.test_every_epoch": (bool, None),
    "parallel.mode": (str, _choice("sync", "hogwild", "async")),
    "parallel.dc_lambda": (float, _nonneg),
    "accumulate_steps": (int, _pos),
    "checkpoint_every_steps": (int, _nonneg),
    "checkpoint_every_seconds": (float, _nonneg),
    "parallel.workers": (int, _pos),
    "parallel.sync_batchnorm": (bool, None),
    "ema.decay": (float, lambda v: None if 0 <= v < 1 else "must be in [0, 1) (0 = off)"),
    "ema.warmup": (bool, None),
    "ema.bn": (str, _choice("recompute", "ema", "copy")),
    "ema.bn_batches": (int, _pos),
    "bag_of_tricks": (bool, None),
}
def _components() -> dict[str, tuple[Registry, dict[str, tuple[Any, Any]]]]:
    """Component tables: their registry, and keys handled by the builder rather than the factory."""
    from .data import CURRICULA
    from .evaluation import EARLY_STOPPING
    from .losses import LOSSES
    from .models import MODELS
    from .optim import OPTIMIZERS, SCHEDULES

    return {
        "model": (MODELS, {"regularization": (list, None), "zero_init_residual": (bool, None)}),
        "optim": (OPTIMIZERS, {"decay_norm_and_bias": (bool, None)}),
        "schedule": (SCHEDULES, {"interval": (str, None), "monitor": (str, None)}),
        "loss": (LOSSES, {"penalties": (list, None)}),
        "early_stopping": (EARLY_STOPPING, {}),
        "curriculum": (CURRICULA, {}),
    }


# factory parameters filled by the builder, never by the config
_SUPPLIED = {"in_shape", "num_classes", "class_counts", "model", "params", "lr", "optimizer", "total_steps", "steps_per_epoch"}


def default_config() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a simple annotation (bool, int, float, str, list[...], X | None).

    Integers are accepted where a float is expected; booleans are never taken for numbers.
    Returns the value (lists as lists). Raises :class:`ConfigError` naming ``key``.
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            if arm is type(None):
                if value is None:
                    return value
                continue
            try:
                return check_type(key, value, arm)
            except ConfigError:
                pass
        raise ConfigError(key, f"expected {annotation}, got {value!r}")
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(annotation)
        return [check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {type(value).__name__} {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(key, f"expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def component_options(registry: Registry, name: str) -> dict[str, Any]:
    """Config-settable options of a registered factory: name -> annotation."""
    fn = registry.get(name)
    hints = typing.get_type_hints(fn)
    return {k: hints.get(k, inspect.Parameter.empty) for k in registry.options(name) if k not in _SUPPLIED}


def _check_component(section: str, spec: Any, registry: Registry, extra: dict) -> None:
    if not isinstance(spec, dict):
        raise ConfigError(section, f"expected a table with a 'name', got {spec!r}")
    name = spec.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name", f"expected a {registry.kind} name, got {name!r}")
    if section in ("early_stopping", "curriculum") and name == "none":
        if len(spec) > 1:
            first = registry.names()[0]
            raise ConfigError(f"{section}.{next(k for k in spec if k != 'name')}",
                              f"{section} is off (name = 'none'); set {section}.name = '{first}' first")
        return
    try:
        opts = component_options(registry, name)
    except KeyError as e:
        raise ConfigError(f"{section}.name", str(e).strip('"')) from None
    for k, v in spec.items():
        if k == "name":
            continue
        if k in extra:
            typ, check = extra[k]
            spec[k] = check_type(f"{section}.{k}", v, typ)
            continue
        if k not in opts:
            raise ConfigError(f"{section}.{k}", f"unknown option of {registry.kind} '{name}' "
                                                f"(options: {', '.join(sorted(set(opts) | set(extra))) or 'none'})")
        spec[k] = check_type(f"{section}.{k}", v, opts[k])


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every key, type and simple range; raise :class:`ConfigError` naming the first bad key."""
    from .data import AUGMENTATIONS, DATASETS, as_spec

    components = _components()
    for key, value in cfg.items():
        if isinstance(value, dict) and key not in components and not any(f.startswith(key + ".") for f in _FIXED):
            raise ConfigError(key, "unknown table")
        if not isinstance(value, dict) and key not in _FIXED:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(k for k in _FIXED if '.' not in k))})")
    for table in ("data", "eval", "parallel", "ema"):
        if not isinstance(cfg.get(table), dict):
            raise ConfigError(table, "expected a table")
        for k in cfg[table]:
            if f"{table}.{k}" not in _FIXED:
                raise ConfigError(f"{table}.{k}", "unknown key (known: "
                                  + ", ".join(f.split('.')[1] for f in _FIXED if f.startswith(table + ".")) + ")")
    for key, (typ, check) in _FIXED.items():
        sect, _, leaf = key.rpartition(".")
        holder = cfg[sect] if sect else cfg
        if leaf not in holder:
            raise ConfigError(key, "missing")
        holder[leaf] = check_type(key, holder[leaf], typ)
        msg = check(holder[leaf]) if check else None
        if msg:
            raise ConfigError(key, f"{msg}, got {holder[leaf]!r}")
    if cfg["data"]["name"] not in DATASETS:
        raise ConfigError("data.name", f"unknown dataset {cfg['data']['name']!r}; choose one of: {', '.join(DATASETS.names())}")
    _check_spec_list("data.augment", cfg["data"]["augment"], AUGMENTATIONS)
    for section, (registry, extra) in components.items():
        if section not in cfg:
            raise ConfigError(section, "missing table")
        _check_component(section, cfg[section], registry, extra)
    from .losses import PENALTIES
    from .models import REGULARIZERS
    from .optim import TRANSFORMS
    for key, registry in (("model.regularization", REGULARIZERS), ("loss.penalties", PENALTIES),
                          ("grad_transforms", TRANSFORMS)):
        sect, _, leaf = key.partition(".")
        _check_spec_list(key, cfg[sect].get(leaf, []) if leaf else cfg[sect], registry)
    return cfg


def _check_spec_list(key: str, items: list, registry: Registry) -> None:
    """A list of techniques by name (``"flip"`` or ``{name = "crop", padding = 4}``), each checked against
    ``registry`` like a component table."""
    from .data import as_spec
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        spec = as_spec(item) if isinstance(item, (str, dict)) else {}
        if not isinstance(spec.get("name"), str):
            raise ConfigError(k, f"expected a{'n' if registry.kind[0] in 'aeiou' else ''} {registry.kind} name or a "
                                 f"table with a 'name', got {item!r}")
        if spec["name"] not in registry:
            raise ConfigError(k, f"unknown {registry.kind} {spec['name']!r}; choose one of: {', '.join(registry.names())}")
        _check_component(k, spec, registry, {})


def _merge(base: dict, layer: dict, prefix: str = "") -> None:
    components = _components()
    for k, v in layer.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            if key in components and "name" in v and v["name"] != base[k].get("name"):
                base[k] = {}
            _merge(base[k], v, key + ".")
        else:
            base[k] = copy.deepcopy(v)


def parse_value(text: str) -> Any:
    """Parse an override's value as TOML (``0.1``, ``true``, ``[1, 2]``, ``"x"``); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> dict[str, Any]:
    """``"a.b=v"`` -> ``{"a": {"b": v}}``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(key or item, f"override must look like key=value, got {item!r}")
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = parse_value(text.strip())
    return out


# "Bag of tricks" (He, Zhang, Zhang, Zhang, Xie & Li 2019, arXiv:1812.01187) as one switch: zero gamma in the last
# norm of each residual branch, no weight decay on norm scales/shifts and biases, linear warm-up then cosine decay,
# label smoothing 0.1. ``bag_of_tricks = true`` merges this layer right after the defaults, so anything the config
# file or ``--set`` gives explicitly still wins.
BAG_OF_TRICKS: dict[str, Any] = {
    "model": {"zero_init_residual": True},
    "optim": {"decay_norm_and_bias": False},
    "schedule": {"name": "cosine", "warmup_epochs": 1.0},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> dict[str, Any]:
    """Defaults (or ``base``), then the TOML file at ``path``, then ``key=value`` overrides; validated.
    When a layer sets ``bag_of_tricks = true``, :data:`BAG_OF_TRICKS` is merged right after the defaults."""
    cfg = copy.deepcopy(base) if base is not None else default_config()
    layers = []
    if path is not None:
        p = Path(path)
        try:
            layers.append(tomllib.loads(p.read_text()))
        except FileNotFoundError:
            raise ConfigError(str(p), "config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(p), f"not valid TOML: {e}") from None
    layers += [parse_override(item) for item in overrides]
    tricks = cfg.get("bag_of_tricks", False)
    for layer in layers:
        tricks = layer.get("bag_of_tricks", tricks)
    if tricks is True:
        _merge(cfg, BAG_OF_TRICKS)
    for layer in layers:
        _merge(cfg, layer)
    return validate(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """Write a config (scalars first, then one table per section) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def with_factory_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every component table completed by its factory's defaults (the options a run takes without
    writing them), as ``traintricks config`` prints it; options without a TOML value (``None``) are left out."""
    out = copy.deepcopy(cfg)
    for section, (registry, _) in _components().items():
        spec = out.get(section)
        if not isinstance(spec, dict) or spec.get("name") in (None, "none"):
            continue
        for key, param in registry.options(spec["name"]).items():
            if key in _SUPPLIED or key in spec or param.default is None:
                continue
            value = list(param.default) if isinstance(param.default, tuple) else param.default
            if isinstance(value, (bool, int, float, str, list)):
                spec[key] = value
    return out
