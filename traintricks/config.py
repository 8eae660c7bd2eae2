"""Run configuration: TOML files, ``--set key=value`` overrides, validation that names the key.

A config is a nested dict. Top-level keys (``epochs``, ``lr``, ...) and the ``data``/``parallel`` tables have
fixed schemas. Everything else is derived from the registries (:mod:`traintricks.registry`): the *component*
tables ``model``, ``optim``, ``schedule``, ``loss``, ``early_stopping`` and ``curriculum`` hold a ``name`` chosen
from a registry plus that component's options, and the lists ``data.augment``, ``model.regularization``,
``loss.penalties``, ``grad_transforms`` and ``callbacks`` hold names (``"tta_flip"``) or tables with a name and
options (``{name = "ema", decay = 0.999}``). Options are checked against the registered entry's options and type
annotations, so a new technique's options become valid config keys by registering it.

``parallel`` stays a table: it chooses how the run is launched (one process / DDP, Hogwild workers, a parameter
server), not something that happens inside the training loop. The old ``[eval]`` and ``[ema]`` tables still load:
they are translated to ``callbacks`` entries and ``test_every_epoch`` with a :class:`ConfigDeprecationWarning`
naming the replacement (:data:`RENAMED`), or fail naming the key and its replacement.

Layers merge in order: defaults, the config file, then each ``--set``. When a layer changes a
component's ``name``, the options written by lower layers for the old component are dropped
(options belong to the component they were written for); the keys the builder applies to any component
(``optim.wrappers``, ``optim.param_groups``, ``optim.layer_decay``, ``optim.decay_norm_and_bias``, the model's
surgery keys ``model.norm``, ``model.regularization``, ...) are kept. Lists are replaced, not merged.
"""
from __future__ import annotations

import collections.abc
import copy
import inspect
import sys
import tomllib
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable

from .registry import Registry


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class ConfigDeprecationWarning(DeprecationWarning):
    """A config key that still works but has a replacement (the message names it). Shown by default."""


warnings.filterwarnings("default", category=ConfigDeprecationWarning)


# The default recipe: trains a small CNN on Fashion-MNIST to about 94% test accuracy in less training time than the
# PyTorch MNIST example's 14 epochs in fp32 (0.93x side by side) and in under half of it in bf16 (docs/benchmarks.md,
# issue 19).
# Component options not listed take the factory's defaults.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "epochs": 23,
    "batch_size": 256,
    "lr": 0.2,
    "device": "cpu",
    # "auto": chosen by timing the run's model for a fraction of a second (training/probe.py; recorded in
    # summary.json's "probe"): bf16 only where faster than fp32, channels-last only where faster, compile on CUDA
    # only, 1 thread or all of them
    "precision": "auto",
    "channels_last": "auto",
    "compile": "auto",
    "threads": "auto",
    # what the run predicts: "auto" = the dataset's task (classification for the default recipe), or a name from
    # traintricks.evaluation.tasks.TASKS (classification, regression, multilabel)
    "task": "auto",
    # the default recipe: a first one-cycle of 7 epochs on plain images, the first 4 of them at 0.72 of the height
    # (progressive_resizing in callbacks), gives ~93.2%, a second of 16 epochs with crop + alternating flip (each
    # image mirrored every other epoch; flip + shift TTA) continues to ~94% (docs/benchmarks.md); 1/30 of the
    # training images (2,000 of Fashion-MNIST) for validation. Pooling before the norm makes the full-resolution stage's
    # norm and activation 4x cheaper (models/cnn.py).
    # data.target: the csv source's label column (or list of regression target columns); data.factory: the python
    # source's "pkg.module:fn"; data.image_size, data.skip_bad: the folder source's (traintricks/data/sources.py,
    # docs/data.md); data.stream ("auto": when the float32 tensors would exceed data.max_memory_mb MiB),
    # data.workers (DataLoader processes, -1: min(2, CPUs)): the folder source's streaming (data/streaming.py);
    # data.label: cifar100's "fine" (default) or "coarse" labels
    "data": {"name": "fashion_mnist", "root": "", "limit": 0, "val_size": 0.0333,
             "augment": ["crop", "alternating_flip"], "augment_from_epoch": 7, "target": "", "factory": "",
             "image_size": 0, "skip_bad": False, "stream": "auto", "max_memory_mb": 2048, "workers": -1, "label": ""},
    # 24-48-96 channels: +0.6 points over 16-32-64 at 25 epochs for 1.7x the step time (docs/benchmarks.md)
    "model": {"name": "cnn", "widths": [24, 48, 96], "blocks": [1, 2, 2], "pool_before_norm": True},
    "optim": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "decay_norm_and_bias": False},
    # min_warmup_steps: a cycle too short to warm up over 15 optimizer steps peaks lower (optim/schedules.py), so
    # short runs (--set data.limit=...) learn; the full run's cycles warm up over hundreds of steps, unchanged
    "schedule": {"name": "multicycle", "cycle_epochs": [7, 16], "peaks": [1.0, 0.5], "min_warmup_steps": 15},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
    "early_stopping": {"name": "none"},
    "curriculum": {"name": "none"},
    # techniques in the training loop, by name from traintricks.training.callbacks.CALLBACKS (in this order, after
    # the engine's own); the default recipe trains its first 4 epochs on smaller images (planned for its 23 epochs:
    # a run of another length rescales them as multicycle does its cycles; a model or data that cannot be resized is
    # trained at full size with a warning), tests with flip TTA once the flips start (data.augment_from_epoch), and
    # its final evaluation adds the 1-pixel shifts of the image and its mirror (tta_shift: ten views)
    "callbacks": [{"name": "progressive_resizing", "sizes": [0.72], "epochs": [4], "run_epochs": 23, "strict": False},
                  "tta_flip", "tta_shift"],
    "test_every_epoch": True,
    "grad_transforms": [],
    "accumulate_steps": 1,
    "checkpoint_every_steps": 0,
    "checkpoint_every_seconds": 0.0,
    # checkpoints kept (0: all; `traintricks average RUN --last k` needs k of them)
    "keep_checkpoints": 2,
    # how the run is launched (a run mode, not a callback): one process or DDP under torchrun, Hogwild workers,
    # or a parameter server with asynchronous workers
    "parallel": {"mode": "sync", "workers": 2, "sync_batchnorm": False, "dc_lambda": 0.0},
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
    "precision": (str, _choice("fp32", "bf16", "fp16", "auto")),
    "channels_last": (bool | str, lambda v: None if v in ("auto", True, False) else "must be auto, true or false"),
    "compile": (bool | str, lambda v: None if v in ("auto", True, False) else "must be auto, true or false"),
    "threads": (int | str, lambda v: None if v == "auto" or isinstance(v, int) and v >= 0 else
                "must be auto or >= 0 (0: PyTorch's default)"),
    "task": (str, _task),
    "data.name": (str, None),
    "data.root": (str, None),
    "data.limit": (int, _nonneg),
    "data.val_size": (float, _nonneg),
    "data.augment": (list, None),
    "data.augment_from_epoch": (int, _nonneg),
    "data.target": (str | list[str], None),
    "data.factory": (str, lambda v: None if not v or v.count(":") == 1 and all(v.split(":")) else
                     "must look like 'pkg.module:function'"),
    "data.image_size": (int, _nonneg),
    "data.skip_bad": (bool, None),
    "data.stream": (bool | str, lambda v: None if v in ("auto", True, False) else "must be auto, true or false"),
    "data.max_memory_mb": (int, _nonneg),
    "data.workers": (int, lambda v: None if v >= -1 else "must be >= 0, or -1 for min(2, CPUs)"),
    "data.label": (str, lambda v: None if v in ("", "fine", "coarse") else "must be fine or coarse (cifar100)"),
    "grad_transforms": (list, None),
    "callbacks": (list, None),
    "test_every_epoch": (bool, None),
    "parallel.mode": (str, _choice("sync", "hogwild", "async")),
    "parallel.dc_lambda": (float, _nonneg),
    "accumulate_steps": (int, _pos),
    "checkpoint_every_steps": (int, _nonneg),
    "checkpoint_every_seconds": (float, _nonneg),
    "keep_checkpoints": (int, _nonneg),
    "parallel.workers": (int, _pos),
    "parallel.sync_batchnorm": (bool, None),
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
        # surgery keys on any model (traintricks.surgery): norm / norm_groups go to a factory that names them as
        # parameters (the built-in models), else convert_norms applies them to the built model
        "model": (MODELS, {"regularization": (list, None), "zero_init_residual": (bool, None),
                           "norm": (str, None), "norm_groups": (int, _pos), "checkpoint": (str, None),
                           "checkpoint_budget_mb": (float, _pos), "fold_for_eval": (bool, None)}),
        # param_groups, layer_decay: layer-wise rates (optim.optimizers.param_groups checks them and names the rule)
        "optim": (OPTIMIZERS, {"decay_norm_and_bias": (bool, None), "wrappers": (list, None),
                               "param_groups": (list, None), "layer_decay": (float, None)}),
        "schedule": (SCHEDULES, {"interval": (str, None), "monitor": (str, None)}),
        "loss": (LOSSES, {"penalties": (list, None)}),
        "early_stopping": (EARLY_STOPPING, {}),
        "curriculum": (CURRICULA, {}),
    }


def _lists() -> dict[str, Registry]:
    """Lists of techniques by name (``"flip"`` or ``{name = "crop", padding = 4}``) and their registries."""
    from .data import AUGMENTATIONS
    from .losses import PENALTIES
    from .models import REGULARIZERS
    from .optim import OPTIMIZER_WRAPPERS, TRANSFORMS
    from .training.callbacks import CALLBACKS
    return {"data.augment": AUGMENTATIONS, "model.regularization": REGULARIZERS, "loss.penalties": PENALTIES,
            "optim.wrappers": OPTIMIZER_WRAPPERS, "grad_transforms": TRANSFORMS, "callbacks": CALLBACKS}


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
    """Config-settable options of a registered technique: name -> annotation (from its registry entry)."""
    return registry.entry(name).annotations()


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
        entry = registry.entry(name)
        opts = entry.annotations()
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
            if getattr(entry, "open_keywords", False):      # an imported factory taking **kwargs: passed on
                continue
            raise ConfigError(f"{section}.{k}", f"unknown option of {registry.kind} '{name}' "
                                                f"(options: {', '.join(sorted(set(opts) | set(extra))) or 'none'})")
        spec[k] = check_type(f"{section}.{k}", v, opts[k])
    for k in getattr(entry, "required", ()):               # an imported factory's parameters without a default
        if k not in spec:
            raise ConfigError(f"{section}.{k}", f"required by {registry.kind} '{name}' (a parameter without a "
                                                f"default); set it, e.g. --set {section}.{k}=...")


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every key, type and simple range; raise :class:`ConfigError` naming the first bad key."""
    from .data import DATASETS

    _translate_old_tables(cfg)
    components = _components()
    for key, value in cfg.items():
        if isinstance(value, dict) and key not in components and not any(f.startswith(key + ".") for f in _FIXED):
            raise ConfigError(key, "unknown table")
        if not isinstance(value, dict) and key not in _FIXED:
            raise ConfigError(key, f"unknown key (known: {', '.join(sorted(k for k in _FIXED if '.' not in k))})")
    for table in ("data", "parallel"):
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
    for section, (registry, extra) in components.items():
        if section not in cfg:
            raise ConfigError(section, "missing table")
        _check_component(section, cfg[section], registry, extra)
    for key, registry in _lists().items():
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
            raise ConfigError(f"{k}.name" if isinstance(item, dict) else k,
                              f"unknown {registry.kind} {spec['name']!r}; choose one of: {', '.join(registry.names())}")
        _check_component(k, spec, registry, {})
        if key == "callbacks" and spec["name"] in [as_spec(it).get("name") for it in items[:i]]:
            raise ConfigError(k, f"a second {spec['name']!r}: each callback may appear once (its state is "
                                 "checkpointed under its name)")


def _merge(base: dict, layer: dict, prefix: str = "") -> None:
    components = _components()
    for k, v in layer.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            if key in components and "name" in v and v["name"] != base[k].get("name"):
                # the old component's own options go; the keys the builder handles for any component (optim's
                # wrappers, param_groups, layer_decay; model's regularization, norm...) stay
                general = components[key][1]
                base[k] = {g: base[k][g] for g in general if g in base[k]}
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
        if isinstance(spec, dict) and spec.get("name") not in (None, "none"):
            _complete(spec, registry)
    for key in ("grad_transforms", "callbacks"):
        items = out.get(key)
        if isinstance(items, list):
            reg = _lists()[key]
            for i, item in enumerate(items):
                spec = {"name": item} if isinstance(item, str) else item
                if isinstance(spec, dict) and spec.get("name") in reg:
                    _complete(spec, reg)
                    items[i] = spec if len(spec) > 1 else spec["name"]
    return out


def _complete(spec: dict[str, Any], registry: Registry) -> None:
    """Add to ``spec`` the registered defaults of the options it does not set (those with a TOML value)."""
    for key, value in registry.defaults(spec["name"]).items():
        value = list(value) if isinstance(value, tuple) else value
        if key not in spec and value is not None and isinstance(value, (bool, int, float, str, list)):
            spec[key] = value


# ------------------------------------------------------------------------------ the old tables ([eval], [ema])
#: old key -> its replacement (the deprecation warnings and errors name it)
RENAMED = {
    "eval.tta_flip": 'callbacks = ["tta_flip"] (leave "tta_flip" out to turn flip TTA off)',
    "eval.test_every_epoch": "test_every_epoch (a top-level key)",
    "ema": 'callbacks = [{name = "ema", decay = 0.999, warmup = true, bn = "recompute", bn_batches = 20}] '
           "(leave the entry out to turn the EMA off)",
}


def _deprecated(key: str, replacement: str | None = None) -> None:
    replacement = replacement or RENAMED[key if key in RENAMED else key.partition(".")[0]]
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:    # point at the caller of load_config
        level, frame = level + 1, frame.f_back
    warnings.warn(f"config key '{key}' is deprecated; use {replacement}", ConfigDeprecationWarning, stacklevel=level)


def _callback_name(item: Any) -> Any:
    return item if isinstance(item, str) else item.get("name") if isinstance(item, dict) else None


def _has_callback(cfg: dict[str, Any], name: str) -> bool:
    items = cfg.get("callbacks")
    return isinstance(items, list) and any(_callback_name(it) == name for it in items)


def _set_callback(cfg: dict[str, Any], name: str, on: bool, options: dict[str, Any] | None = None) -> None:
    """Turn the ``callbacks`` entry ``name`` on (adding ``options`` to it) or off (removing it)."""
    items = cfg.get("callbacks")
    if not isinstance(items, list):
        return                          # reported by validate as a wrong type
    at = [i for i, it in enumerate(items) if _callback_name(it) == name]
    if not on:
        cfg["callbacks"] = [it for i, it in enumerate(items) if i not in at]
        return
    if not at:
        items.append({"name": name, **options} if options else name)
    elif options:
        i = at[0]
        items[i] = {**({"name": items[i]} if isinstance(items[i], str) else items[i]), **options}


def _translate_old_tables(cfg: dict[str, Any]) -> None:
    """Translate an old ``[eval]`` / ``[ema]`` table into ``callbacks`` entries and ``test_every_epoch``, with a
    :class:`ConfigDeprecationWarning` per key naming its replacement. A key of those tables that has no
    translation (unknown, or a value of the wrong type) raises :class:`ConfigError` naming it and the
    replacement."""
    ev = cfg.pop("eval", None)
    if (ev is not None or isinstance(cfg.get("ema"), dict)) and cfg.get("callbacks") == DEFAULTS["callbacks"]:
        # a config with an old table predates the callbacks list: the recipe's list of that time (the shift TTA and
        # progressive resizing came later)
        cfg["callbacks"] = ["tta_flip"]
    if ev is not None:
        if not isinstance(ev, dict):
            raise ConfigError("eval", f"the [eval] table is replaced by {RENAMED['eval.tta_flip']} and "
                                      f"{RENAMED['eval.test_every_epoch']}; got {ev!r}")
        for k, v in ev.items():
            key = f"eval.{k}"
            if key not in RENAMED:
                raise ConfigError(key, f"unknown key of the old [eval] table (replaced by {RENAMED['eval.tta_flip']}"
                                       f" and {RENAMED['eval.test_every_epoch']})")
            v = check_type(key, v, bool)
            _deprecated(key)
            if k == "tta_flip":
                _set_callback(cfg, "tta_flip", v)
            else:
                cfg["test_every_epoch"] = v
    ema = cfg.pop("ema", None)
    if ema is not None:
        if not isinstance(ema, dict):
            raise ConfigError("ema", f"the [ema] table is replaced by {RENAMED['ema']}; got {ema!r}")
        from .training.callbacks import CALLBACKS
        known = component_options(CALLBACKS, "ema")
        for k, v in ema.items():
            if k not in known:
                raise ConfigError(f"ema.{k}", f"unknown key of the old [ema] table (options: {', '.join(known)}); "
                                              f"it is replaced by {RENAMED['ema']}")
            ema[k] = check_type(f"ema.{k}", v, known[k])
        if "decay" in ema and not 0 <= ema["decay"] < 1:
            raise ConfigError("ema.decay", f"must be in [0, 1) (0 = off), got {ema['decay']!r}; "
                                           f"it is replaced by {RENAMED['ema']}")
        if ema:       # the replacement with the user's own values (the class's defaults for the rest)
            from .training.callbacks import CALLBACKS
            opts = {**CALLBACKS.defaults("ema"), **ema}
            entry = ", ".join(f"{k} = {_toml_value(v)}" for k, v in opts.items())
            _deprecated("ema", f"callbacks = [{{name = \"ema\", {entry}}}] (leave the entry out to turn the EMA off)")
        if ema.get("decay") == 0:
            _set_callback(cfg, "ema", False)
        elif "decay" in ema or _has_callback(cfg, "ema"):
            _set_callback(cfg, "ema", True, ema)
        # else: only other ema.* keys, no decay: the EMA stays off, as with the old table's decay = 0
