"""From a config to a trained model: build every component by name, train, write the report.

This is what ``traintricks train`` runs. :func:`build_trainer` turns a validated config (see
:mod:`traintricks.config`) into a :class:`Trainer`; :func:`run` adds the output directory
(``config.toml``, ``metrics.jsonl``, ``summary.json``, ``curves.png``, ``report.md``,
``model.safetensors``, ``checkpoints/``) and resumption.
"""
from __future__ import annotations

import copy
import functools
import inspect
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import warn
from ..config import DEFAULTS, ConfigError, load_config, to_toml, with_factory_defaults
from ..data import (AUGMENTATIONS, CURRICULA, Compose, CurriculumLoader, DataSplits, as_spec,
                    data_from_config)
from ..data.curriculum import load_scores, reference_scores
from ..data.datasets import data_stats
from ..data.resize import ProgressiveResizing
from ..data.streaming import split_loader
from ..evaluation import EARLY_STOPPING
from ..evaluation.tasks import loss_for_task, losses_for_task, resolve_task
from ..losses import LOSSES, PENALTIES, AuxiliaryHeads, WithPenalties
from ..models import MODELS, REGULARIZERS, zero_init_residual
from ..optim import OPTIMIZER_WRAPPERS, OPTIMIZERS, SCHEDULES, TRANSFORMS, BatchSizeLR, param_groups, sets_rate_each_step
from ..parallel.ddp import dist_info, gather_object, setup_distributed
from .. import surgery
from . import checkpoint as ckpt
from .report import plot_curves, write_report
from .callbacks import CALLBACKS, FlipTTA, FoldForEval, NonFiniteLossError, ShiftTTA
from .probe import probe
from .trainer import Trainer, optimizer_steps, resolve_device

EVAL_BATCH = 1000


class RunExistsError(RuntimeError):
    """The output directory already holds a run."""


def _build(section: str, spec: dict[str, Any], fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call a factory; turn its ValueError/TypeError into a ConfigError naming the option when possible."""
    try:
        return fn(*args, **kwargs)
    except KeyError as e:                  # a name a registry does not know (e.g. model.norm = "bogus")
        msg = str(e).strip("'\"")
        bad = [k for k, v in spec.items() if isinstance(v, str) and f"'{v}'" in msg and k != "name"]
        raise ConfigError(f"{section}.{bad[0]}" if bad else section, msg) from None
    except (ValueError, TypeError) as e:
        first = str(e).split(" ", 1)[0].strip(":")
        try:
            known = first in spec or first in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            known = first in spec
        if known:
            raise ConfigError(f"{section}.{first}", str(e)) from None
        if isinstance(e, ValueError):          # a factory's own refusal: its message says what is wrong
            raise ConfigError(section, str(e)) from None
        # the message does not start with an option's name (e.g. a user's factory failing on a value of the wrong
        # type): say which call failed, with which options, and the exception's type
        given = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "name" and k in kwargs)
        raise ConfigError(section, f"{spec.get('name', getattr(fn, '__name__', 'the factory'))!r}"
                                   f"({given}) raised {type(e).__name__}: {e}") from None


def _options(spec: dict[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "name" and k not in drop}


def build_augment(specs: list, num_classes: int | None = None, data: DataSplits | None = None,
                  seed: int | None = None) -> Compose | None:
    """The config's ``data.augment`` list as one transform (mixup/cutmix get the number of classes; the policies
    get ``data``'s standardization ``mean``, ``std`` and raw ``pixel_range``; an augmentation with a ``seed`` option
    of its own, the alternating flip's pattern, gets the run's ``seed`` unless its entry sets one)."""
    supplied: dict[str, Any] = {"num_classes": num_classes}
    if seed is not None:
        supplied["seed"] = seed
    if data is not None:
        supplied.update(mean=data.mean or None, std=data.std or None, pixel_range=data.pixel_range)
    augs = []
    shape = tuple(getattr(data, "input_shape", ()) or ())
    for i, item in enumerate(specs):
        spec = as_spec(item)
        factory = AUGMENTATIONS.get(spec["name"])
        given = _options(spec)
        augs.append(_build(f"data.augment[{i}]", spec, factory,
                           **{k: v for k, v in _supplied(factory, supplied).items() if k not in given}, **given))
        if shape and len(shape) != 3 and not getattr(augs[-1], "mixes_labels", False):
            # not images: try the augmentation on a batch of this data's shape now, not epochs into the run
            try:
                kw = {"index": torch.arange(2), "epoch": 0} if getattr(augs[-1], "uses_index", False) else {}
                augs[-1](torch.zeros(2, *shape), generator=torch.Generator().manual_seed(0), **kw)
            except (ValueError, RuntimeError, IndexError) as e:
                raise ConfigError(f"data.augment[{i}]", f"{spec['name']!r} cannot transform this data's inputs of "
                                  f"shape {shape} (tried on a batch of two: {e}); set data.augment = [] or keep the augmentations that "
                                  "apply to them") from None
    return Compose(augs) if augs else None


def _supplied(factory: Callable, values: dict[str, Any]) -> dict[str, Any]:
    """The builder-supplied arguments (model, shapes, class counts) that ``factory`` asks for."""
    params = inspect.signature(factory).parameters
    return {k: v for k, v in values.items() if k in params}


def build_callbacks(specs: list, supplied: dict[str, Any]) -> list:
    """The config's ``callbacks`` list, each entry built from :data:`~traintricks.training.callbacks.CALLBACKS`
    with its options; ``supplied`` holds what the builder passes to the entries that ask for it (``model``; the
    flip TTA's ``from_epoch`` = ``data.augment_from_epoch``). Errors name ``callbacks[i].<option>``."""
    out = []
    for i, item in enumerate(specs):
        spec = as_spec(item)
        try:
            factory = CALLBACKS.get(spec["name"])
        except KeyError as e:
            raise ConfigError(f"callbacks[{i}].name", str(e).strip("'\"")) from None
        out.append(_build(f"callbacks[{i}]", spec, factory, **_supplied(factory, supplied), **_options(spec)))
    return out


def build_loss(cfg: dict[str, Any], model: torch.nn.Module, data: DataSplits) -> torch.nn.Module:
    """The configured loss, with its penalty terms and the model's auxiliary heads."""
    spec = cfg["loss"]
    supplied = {"model": model, "in_shape": tuple(data.input_shape), "num_classes": data.num_classes,
                "class_counts": torch.bincount(data.train_y, minlength=data.num_classes).tolist()
                if getattr(data, "task", "classification") == "classification" else None,
                "load_model": lambda run_dir: load_teacher(run_dir, data.input_shape, data.num_classes)}
    factory = LOSSES.get(spec["name"])
    loss = _build("loss", spec, factory, **_supplied(factory, supplied), **_options(spec, drop=["penalties"]))
    penalties = []
    for i, item in enumerate(spec.get("penalties", [])):
        p = as_spec(item)
        pf = PENALTIES.get(p["name"])
        penalties.append(_build(f"loss.penalties[{i}]", p, pf, **_supplied(pf, supplied), **_options(p)))
    if penalties:
        loss = WithPenalties(loss, penalties)
    if getattr(model, "aux_heads", None):
        loss = AuxiliaryHeads(loss, model, model.aux_weight)
    return loss


def build_data(cfg: dict[str, Any]) -> DataSplits:
    """The config's dataset (``data.name``, ``data.root``, ``data.limit``, ``data.val_size``, split by ``seed``);
    a bad value raises :class:`~traintricks.config.ConfigError` naming its ``data.*`` key."""
    return _build("data", cfg["data"], data_from_config, cfg)


#: the model table's keys applied to the built model by surgery (traintricks.surgery), not passed to its factory
SURGERY_KEYS = ("regularization", "zero_init_residual", "norm", "norm_groups", "checkpoint", "checkpoint_budget_mb",
                "fold_for_eval")


def _surgery(key: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """A surgery named by its config key: its refusals (nothing to change, a bad selector or option) become a
    ``ConfigError`` naming the key."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(key, str(e).strip("'\"")) from None


def build_model(cfg: dict[str, Any], in_shape: Sequence[int], num_classes: int, batch_size: int | None = None
                ) -> torch.nn.Module:
    """The config's model: a registered name or an import path (``"pkg.module:factory"``, ``"timm:<model>"``),
    called with the table's options and, where its signature names them, ``in_shape`` and ``num_classes``; then
    the surgeries of the table's keys, on any model (:mod:`traintricks.surgery`), in this order:

    - ``norm`` (and ``norm_groups``): passed to a factory that has such parameters (the built-in models); otherwise
      every norm layer of the built model is converted (:func:`~traintricks.surgery.convert_norms`, e.g.
      ``"groupnorm"``, ``"none"``);
    - ``zero_init_residual``: the last norm of every residual branch zeroed (any model, found by tracing);
    - ``regularization``: the regularizers, in their order (:data:`~traintricks.models.REGULARIZERS`);
    - ``checkpoint`` (a module selector, e.g. ``"layer*.*"`` or ``"type:Bottleneck"``): each selected block
      recomputed in backward; ``checkpoint_budget_mb``: the blocks the planner picks so that the saved activations
      of a batch of ``batch_size`` fit the budget;
    - ``fold_for_eval`` is applied by the trainer's ``fold_for_eval`` callback (evaluation only).

    Then a dry forward pass on zeros of ``(2, *in_shape)`` so that shape problems surface now. Raises
    ``ConfigError`` naming ``model.name`` (an import path that does not import, a factory returning something
    other than an ``nn.Module``, a model that cannot take the data's inputs) or the key at fault (a surgery that
    finds nothing to change says what it looked for)."""
    spec = cfg["model"]
    try:
        factory = MODELS.get(spec["name"])
    except KeyError as e:         # an import path that no longer imports (a run resumed or reported elsewhere)
        raise ConfigError("model.name", str(e)) from None
    supplied = _supplied(factory, {"in_shape": tuple(in_shape), "num_classes": num_classes})
    params = inspect.signature(factory).parameters
    by_factory = [k for k in ("norm", "norm_groups") if k in params]       # the built-in models' own options
    model = _build("model", spec, factory, **supplied,
                   **_options(spec, drop=[k for k in SURGERY_KEYS if k not in by_factory]))
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model.name", f"{spec['name']!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if spec.get("norm") and "norm" not in by_factory:
        opts = {"groups": spec["norm_groups"]} if "norm_groups" in spec else {}
        _surgery("model.norm", surgery.convert_norms, model, spec["norm"], **opts)
    elif "norm_groups" in spec and "norm_groups" not in by_factory:
        raise ConfigError("model.norm_groups", "sets the groups of model.norm's conversion; set model.norm too")
    if spec.get("zero_init_residual") and not zero_init_residual(model):
        warn(f"model.zero_init_residual: model {spec['name']!r} has no residual additions (y = x + f(x)) "
             "whose branch ends in a norm, conv or linear layer; nothing was zeroed")
    for i, item in enumerate(spec.get("regularization", [])):
        r = as_spec(item)
        model = _build(f"model.regularization[{i}]", r, REGULARIZERS.get(r["name"]), model, **_options(r))
    if spec.get("checkpoint"):
        _surgery("model.checkpoint", surgery.checkpoint_blocks, model, spec["checkpoint"])
    if spec.get("checkpoint_budget_mb"):
        if spec.get("checkpoint"):
            raise ConfigError("model.checkpoint_budget_mb", "model.checkpoint already chose the blocks; set one")
        example = torch.zeros(batch_size or cfg.get("batch_size", 2), *in_shape)
        try:
            _surgery("model.checkpoint_budget_mb", surgery.checkpoint, model, example,
                     int(spec["checkpoint_budget_mb"] * 2**20))
        except ConfigError as e:
            if "already fit" not in str(e):
                raise
            warn(f"{e} (nothing is recomputed)")   # the budget holds as the model is
    model.eval()
    try:  # a dry forward pass: shape problems surface now, naming the model, not mid-training
        with torch.no_grad():
            out = model(torch.zeros(2, *in_shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError("model", f"model {spec['name']!r} cannot process inputs of shape {tuple(in_shape)} "
                                   f"from data.name={cfg['data']['name']!r}: {e}") from None
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] != num_classes:
        # e.g. an imported factory whose class-count parameter has another name than num_classes: it kept its
        # own default, and would train to a wrong target range (or fail mid-training)
        raise ConfigError("model", f"model {spec['name']!r} gives {out.shape[1]} outputs per example, but "
                                   f"data.name={cfg['data']['name']!r} has {num_classes} classes / targets "
                                   f"(an imported factory gets the count as its parameter num_classes)")
    model.train()
    return model


def load_run_model(run_dir: str | Path, in_shape: Sequence[int] | None = None,
                   num_classes: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model of a finished traintricks run directory (its ``config.toml`` and ``model.safetensors``),
    in eval mode, and its config. Shapes default to those the run recorded in ``data_stats.json`` (else to those of
    the run's dataset, which is then loaded)."""
    run_dir = Path(run_dir)
    for f in ("config.toml", "model.safetensors"):
        if not (run_dir / f).is_file():
            raise ckpt.CheckpointError(f"{run_dir / f} not found; give the directory of a finished traintricks run")
    cfg = load_config(run_dir / "config.toml")
    if (in_shape is None or num_classes is None) and (run_dir / "data_stats.json").is_file():
        import json
        stats = json.loads((run_dir / "data_stats.json").read_text())
        in_shape, num_classes = tuple(stats["input_shape"]), int(stats["num_classes"])
    if in_shape is None or num_classes is None:
        data = build_data(cfg)
        in_shape, num_classes = data.input_shape, data.num_classes
    model = build_model(cfg, in_shape, num_classes)
    model.load_state_dict(ckpt.load_weights(run_dir / "model.safetensors"))
    return model.eval(), cfg


def load_teacher(run_dir: str | Path, in_shape: Sequence[int], num_classes: int) -> torch.nn.Module:
    """The trained model of a finished run, as a distillation teacher (the ``load_model`` the recipe supplies to
    the ``distillation`` loss). Raises ``ValueError`` naming ``teacher`` where ``run_dir`` holds no finished run."""
    try:
        return load_run_model(run_dir, in_shape, num_classes)[0]
    except ckpt.CheckpointError as e:
        raise ValueError(f"teacher: {e}") from None


def build_curriculum(cfg: dict[str, Any], data: DataSplits, batch_size: int, loader_args: dict) -> CurriculumLoader:
    """The config's ``curriculum``: difficulty scores (a file, or a reference run's per-example loss), the
    easy-to-hard order, and a :class:`CurriculumLoader` with the pacing function."""
    spec = cfg["curriculum"]
    pacing = _build("curriculum", spec, CURRICULA.get(spec["name"]), **_options(spec))
    if pacing.scores:
        scores = _build("curriculum.scores", spec, load_scores, pacing.scores, len(data.train_x))
    else:
        try:
            ref, _ = load_run_model(pacing.reference, data.input_shape, data.num_classes)
        except (ckpt.CheckpointError, RuntimeError) as e:
            raise ConfigError("curriculum.reference", str(e)) from None
        scores = reference_scores(ref, data.train_x, data.train_y)
    order = torch.argsort(scores, stable=True)
    return CurriculumLoader(data.train_x, data.train_y, batch_size, order, pacing, cfg["epochs"], **loader_args)


def augment_from_epoch(cfg: dict[str, Any]) -> int:
    """``data.augment_from_epoch`` for this run. With a ``multicycle`` schedule planned for ``sum(cycle_epochs)``
    epochs and a run of another length ``E`` (the schedule rescales its cycles to the run), a start at a cycle's
    boundary ``b`` moves with it, to ``round(E * b / sum(cycle_epochs))``, so that the augmented cycles stay the
    augmented ones (the default recipe's second cycle, on a ``--set epochs=8`` run); any other start is kept."""
    start, s = cfg["data"]["augment_from_epoch"], cfg["schedule"]
    cycles = s.get("cycle_epochs") if s.get("name") == "multicycle" else None
    if not cycles or not start or sum(cycles) == cfg["epochs"]:
        return start
    bounds = [sum(cycles[:i + 1]) for i in range(len(cycles))]
    if not any(abs(start - b) < 1e-9 for b in bounds):
        return start
    return int(round(cfg["epochs"] * start / sum(cycles)))


def _refusing_key(message: str, cfg: dict[str, Any]) -> str:
    """The config key a refusal raised while building the trainer is about: a callback named at the start of the
    message (``callbacks[i]``), precision, or the callbacks list."""
    for i, item in enumerate(cfg.get("callbacks", [])):
        name = as_spec(item)["name"]
        if message.startswith((f"{name}:", f"{name} ", name)):
            return f"callbacks[{i}]"
    return "precision" if "precision" in message else "callbacks"


def build_trainer(cfg: dict[str, Any], data: DataSplits | None = None, out_dir: str | Path | None = None,
                  progress: bool = True, callbacks: Sequence[Callable] = (), model: torch.nn.Module | None = None,
                  shard: tuple[int, int] | None = None, evaluate: bool = True) -> Trainer:
    """Build data, model, optimizer, schedule, loss and trainer from a validated config.

    ``model`` replaces the built model (e.g. one in shared memory); ``shard=(rank, count)`` trains on that
    share of every batch (Hogwild workers; under ``torchrun`` the process group decides); ``evaluate=False``
    skips validation and test evaluation during training."""
    if cfg["threads"] != "auto" and cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    d = cfg["data"]
    if data is None:
        data = build_data(cfg)
    task = resolve_task(cfg.get("task", "auto"), data)
    fits = losses_for_task(task)
    if fits is not None and cfg["loss"]["name"] not in fits:
        if cfg["loss"] != DEFAULTS["loss"]:           # a loss the user chose that does not fit: refused, named
            raise ConfigError("loss.name", f"{cfg['loss']['name']!r} does not fit task {task!r}; choose one of: "
                                           f"{', '.join(fits)}")
        # the default recipe's cross-entropy, untouched, becomes the task's own loss (written so in config.toml)
        cfg = {**cfg, "loss": loss_for_task(task, cfg["loss"])}
        warn(f"task {task!r}: loss {cfg['loss']['name']!r} (the default recipe's cross_entropy fits "
             f"classification only)")
    if model is None:
        model = build_model(cfg, data.input_shape, data.num_classes)
    # the "auto" settings (precision, channels-last, compile, threads): a sub-second timing of this model
    machine = probe(model, data.input_shape, data.num_classes, resolve_device(cfg["device"]),
                    precision=cfg["precision"], channels_last=cfg["channels_last"], compile=cfg["compile"],
                    threads=cfg["threads"])
    if cfg["parallel"]["sync_batchnorm"]:
        from ..nn.sync_batchnorm import sync_batchnorm_
        sync_batchnorm_(model)

    bs = cfg["batch_size"]
    info = dist_info()
    rank, world = shard if shard is not None else (info.rank, info.world_size)
    acc = cfg["accumulate_steps"]
    if bs % (world * acc):
        raise ConfigError("batch_size", f"the global batch {bs} must divide into {world} process(es) x "
                                        f"{acc} accumulation step(s)")
    streamed = getattr(data, "streamed", False)      # an image folder streamed from disk (data/streaming.py)
    if streamed and cfg["parallel"]["mode"] != "sync":
        raise ConfigError("parallel.mode", f"{cfg['parallel']['mode']!r} workers cannot stream data.name="
                                           f"{d['name']!r} from disk; set data.stream = false or parallel.mode = 'sync'")
    if streamed and cfg["curriculum"]["name"] != "none":
        raise ConfigError("curriculum.name", "a curriculum orders the training set in memory; the images are "
                                             "streamed from disk: set data.stream = false")
    augment_from = augment_from_epoch(cfg)
    loader_args = dict(drop_last=len(data.train_y) > bs, seed=cfg["seed"],
                       transform=build_augment(d["augment"], data.num_classes, data, cfg["seed"]), rank=rank,
                       world_size=world,
                       transform_from_epoch=augment_from)
    if cfg["curriculum"]["name"] == "none":
        train = split_loader(data, "train", bs // (world * acc), shuffle=True, **loader_args)
    else:
        train = build_curriculum(cfg, data, bs // (world * acc), loader_args)
    eval_bs = bs if streamed else EVAL_BATCH
    val = split_loader(data, "val", eval_bs) if len(data.val_y) and evaluate else None
    test = split_loader(data, "test", eval_bs) if evaluate else None

    o = cfg["optim"]
    opt_fn = OPTIMIZERS.get(o["name"])
    wd_param = inspect.signature(opt_fn).parameters.get("weight_decay")
    wd = o.get("weight_decay", wd_param.default if wd_param is not None else 0.0)
    layerwise = {"rules": o.get("param_groups", []), "layer_decay": o.get("layer_decay")}
    if (layerwise["rules"] or layerwise["layer_decay"] is not None) and \
            "one_group" in OPTIMIZERS.entry(o["name"]).capabilities:
        raise ConfigError("optim.param_groups" if layerwise["rules"] else "optim.layer_decay",
                          f"{o['name']!r} shares one rate across all parameters: no layer-wise rates")
    try:
        groups = param_groups(model, wd, o.get("decay_norm_and_bias", False), lr=cfg["lr"], **layerwise)
    except ValueError as e:
        raise ConfigError("optim.layer_decay" if str(e).startswith("layer_decay") else "optim.param_groups",
                          str(e)) from None
    optimizer = _build("optim", o, opt_fn, groups, lr=cfg["lr"], **_supplied(opt_fn, {"model": model}),  # SAM's BN
                       **_options(o, drop=["decay_norm_and_bias", "wrappers", "param_groups", "layer_decay"]))
    for i, item in enumerate(o.get("wrappers", [])):     # Lookahead...: each wraps the optimizer built so far
        w = as_spec(item)
        optimizer = _build(f"optim.wrappers[{i}]", w, OPTIMIZER_WRAPPERS.get(w["name"]), optimizer, **_options(w))
    s = cfg["schedule"]
    updates = optimizer_steps(len(train), acc, drop_tail=loader_args["drop_last"])   # per epoch, a tail too
    scheduler = _build("schedule", s, SCHEDULES.get(s["name"]), optimizer, cfg["epochs"] * updates, updates,
                       **_options(s, drop=["interval", "monitor"]))
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    interval = s.get("interval", "epoch" if plateau else "step")   # the registry's schedules count steps
    if interval not in ("step", "epoch"):
        raise ConfigError("schedule.interval", f"must be 'step' or 'epoch', got {interval!r}")
    if plateau and interval != "epoch":
        raise ConfigError("schedule.interval", f"{s['name']!r} is stepped with a metric after each evaluation: "
                                               "it must be 'epoch'")
    if "monitor" in s and not plateau:
        raise ConfigError("schedule.monitor", f"{s['name']!r} takes no metric (a 'plateau' schedule does)")
    monitor = s.get("monitor", "val_loss") if plateau else None
    if monitor is not None and monitor.startswith("val") and not (len(data.val_y) and evaluate):
        raise ConfigError("schedule.monitor", f"monitors {monitor!r} but data.val_size is 0")
    if "hypergrad_lr" in optimizer.defaults and sets_rate_each_step(scheduler):
        raise ConfigError("schedule.name", f"{s['name']!r} sets the rate from a formula at every step, which would "
                          f"overwrite the rate {o['name']} learns (hypergradient descent, 1703.04782); use "
                          f"'constant', or 'step' / 'exponential' (they scale the learned rate)")
    loss_fn = build_loss(cfg, model, data)
    techniques = build_callbacks(cfg["callbacks"], {"model": model, "from_epoch": augment_from,
                                                    "mean": data.mean or [0.0], "std": data.std or [1.0],
                                                    "data_range": list(data.pixel_range)})   # the raw inputs' range
    if cfg["model"].get("fold_for_eval") and not any(isinstance(c, FoldForEval) for c in techniques):
        # a model with nothing to fold (e.g. model.norm = "groupnorm" in a compare --vary) is evaluated as it is,
        # with a warning naming the key and why (the callback itself would refuse it)
        try:
            _surgery("model.fold_for_eval", surgery.fold_batchnorm, copy.deepcopy(model).eval())
            techniques.append(FoldForEval())       # last: it folds whichever model the others chose to evaluate
        except ConfigError as e:
            warn(f"{e}; evaluating the model unfolded")
    tta = [c.name for c in techniques if isinstance(c, (FlipTTA, ShiftTTA))]
    if d["augment"] and augment_from >= cfg["epochs"]:
        moved = f" (rescaled with the cycles from {d['augment_from_epoch']})" if augment_from != d["augment_from_epoch"] \
            else ""
        off = f", nor the test-time augmentation that starts with it ({', '.join(tta)})" if tta else ""
        warn(f"data.augment is never applied{off}: data.augment_from_epoch ({augment_from}{moved}) >= "
             f"epochs ({cfg['epochs']}); set data.augment_from_epoch lower")
    images = len(getattr(data, "input_shape", (0, 0, 0))) == 3
    if tta and not images:
        warn(f"callbacks: {', '.join(repr(n) for n in tta)} test-time augmentation applies to images "
             f"(C, H, W) only; these inputs have shape {tuple(data.input_shape)} and are evaluated "
             "without it")
    if images and any(isinstance(c, FlipTTA) for c in techniques) and \
            not any(as_spec(a)["name"] in ("flip", "alternating_flip") for a in d["augment"]):
        warn("callbacks: 'tta_flip' is on but data.augment has no 'flip' or 'alternating_flip': the model is "
             "tested on mirror images it never trained on")
    shift = next((c for c in techniques if isinstance(c, ShiftTTA)), None)
    if images and shift is not None:
        specs = [{**AUGMENTATIONS.defaults(a["name"]), **a} for a in map(as_spec, d["augment"])]
        reach = [a["padding"] if a["name"] == "crop" else a["max_shift"]
                 for a in specs if a["name"] in ("crop", "translate")]
        if max(reach, default=0) < shift.shift:
            warn(f"callbacks: 'tta_shift' (shift {shift.shift}) is on but data.augment has no 'crop' or "
                 f"'translate' reaching {shift.shift} pixel{'s' if shift.shift > 1 else ''}: the model is "
                 "tested on translations it never trained on (list callbacks without 'tta_shift' to drop it)")
    es = cfg["early_stopping"]
    early = None if es["name"] == "none" else _build("early_stopping", es, EARLY_STOPPING.get(es["name"]), **_options(es))
    if early is not None and val is None and early.monitor.startswith("val"):
        raise ConfigError("early_stopping.monitor", f"monitors {early.monitor!r} but data.val_size is 0")
    transforms = []
    for i, item in enumerate(cfg.get("grad_transforms", [])):
        t = as_spec(item)
        transforms.append(_build(f"grad_transforms[{i}]", t, TRANSFORMS.get(t["name"]), **_options(t)))
    extra = [scheduler.batch_schedule] if isinstance(scheduler, BatchSizeLR) else []   # sets the loader's batch
    try:
        trainer = Trainer(model, optimizer, loss_fn, train, val, test, scheduler=scheduler,
                          scheduler_interval=interval, scheduler_monitor=monitor, epochs=cfg["epochs"],
                          grad_transforms=transforms, accumulate_steps=acc, drop_tail=loader_args["drop_last"],
                          early_stopping=early, out_dir=out_dir, device=cfg["device"],
                          precision=machine["precision"], channels_last=bool(machine["channels_last"]),
                          compile=bool(machine["compile"]),
                          test_every_epoch=cfg["test_every_epoch"],
                          callbacks=[*techniques, *extra, *callbacks], progress=progress, task=task,
                          checkpoint_every_steps=cfg.get("checkpoint_every_steps", 0),
                          checkpoint_every_seconds=cfg.get("checkpoint_every_seconds", 0.0),
                          keep_checkpoints=cfg.get("keep_checkpoints", 2))
        # progressive resizing tried on an example of the data's shape now, not at the first resized batch: a model
        # or data it cannot resize is refused here (strict), or one warning and full-size training
        for cb in trainer.callbacks:
            if isinstance(cb, ProgressiveResizing) and cb.resizes(trainer.epochs):   # (a short run may resize none)
                cb.check(trainer, torch.zeros(1, *data.input_shape, device=trainer.device))
    except ValueError as e:
        # a combination the trainer or a callback's setup refuses (SWA starting after the last epoch, fp16 with a
        # closure optimizer, two weight averages, a model progressive resizing cannot resize): a ConfigError naming
        # the key, before any work starts
        raise ConfigError(_refusing_key(str(e), cfg), str(e)) from None
    trainer.probe = machine     # summary.json's "probe"
    # the machine's choices written into the run's config.toml: a resumed run (another process, maybe a noisier
    # moment) continues with the precision, memory format, compile and threads it started with, not a new probe
    cfg = {**cfg, **{k: machine[k] for k in ("precision", "channels_last", "compile", "threads") if k in machine}}
    trainer.config = cfg        # as built (the task's loss filled in): what run() writes to config.toml
    trainer.data_stats = {**data_stats(data, d["image_size"]), "task": trainer.task.name}   # data_stats.json
    return trainer


def run(cfg: dict[str, Any] | None, out_dir: str | Path, resume: bool = False, progress: bool = True,
        callbacks: Sequence[Callable] = ()) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir`` (or continue the run there when ``resume``); return the summary.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes join a process group and train with DDP; only
    rank 0 writes (see :mod:`traintricks.parallel`)."""
    out = Path(out_dir)
    info = setup_distributed(cfg["device"] if cfg is not None else "cpu")
    if resume and info.distributed:
        _same_run_on_every_process(out)
    if resume:
        if not (out / "config.toml").is_file():
            raise ckpt.CheckpointError(f"{out / 'config.toml'}: not found; is {out} a traintricks run directory?")
        cfg = load_config(out / "config.toml")
        if ckpt.latest_checkpoint(out / "checkpoints") is None:
            raise ckpt.CheckpointError(f"{out / 'checkpoints'}: no complete checkpoint to resume from")
    else:
        if cfg is None:
            cfg = load_config()
        if ckpt.latest_checkpoint(out / "checkpoints") is not None or (out / "summary.json").exists():
            raise RunExistsError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")

    def write_config() -> None:      # once the run is known to build: a config error leaves no directory behind
        if not resume and info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            # every option written out (the factories' defaults too): reloading the file gives this run's config
            # even where the default recipe sets an option the run's component left at its factory default
            ckpt.atomic_write_text(out / "config.toml", to_toml(with_factory_defaults(cfg)))

    if cfg["parallel"]["mode"] in ("hogwild", "async"):
        write_config()
        return _run_hogwild(cfg, out, resume)
    trainer = build_trainer(cfg, out_dir=out, progress=progress, callbacks=callbacks)
    cfg = trainer.config             # as built: e.g. a regression run's loss, not the default recipe's cross-entropy
    write_config()
    if info.is_main:                 # the inputs' standardization, shapes and classes: load_run needs no data
        ckpt.atomic_write_json(out / "data_stats.json", trainer.data_stats)
    if resume:
        trainer.resume(out)
    meta = _run_meta(cfg, trainer)
    try:
        summary = trainer.fit()
    except NonFiniteLossError as e:
        summary = {**meta, "status": "diverged", "error": str(e), "epochs": trainer.epoch,
                   "last_checkpoint": str(trainer.last_checkpoint) if trainer.last_checkpoint else None}
        if info.is_main:
            ckpt.atomic_write_json(out / "summary.json", summary)
        raise
    summary = {**meta, "status": "finished", "processes": info.world_size, **summary}
    if not info.is_main:
        return summary
    ckpt.save_weights(trainer.eval_model.state_dict(), out / "model.safetensors", {"epoch": str(trainer.epoch)})
    ckpt.atomic_write_json(out / "summary.json", summary)
    if trainer.history:
        plot_curves(trainer.history, out / "curves.png", title=f"{meta['dataset']} / {meta['model']}")
    write_report(out, summary, trainer.history, to_toml(cfg))
    return summary


def _same_run_on_every_process(out: Path) -> None:
    """Before a distributed ``--resume``: every process (on every machine) must read the same run directory,
    the same config and the same latest checkpoint, else ``CheckpointError`` on every process naming the ones
    that differ (a machine without the directory, or with a stale copy of it, would otherwise fail in the first
    collective or, worse, train from other state than rank 0)."""
    import hashlib

    def digest(path: Path) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
    last = ckpt.latest_checkpoint(out / "checkpoints")
    view = (digest(out / "config.toml"), last.name if last is not None else None,
            digest(last / "state.pt") if last is not None else None)
    views = gather_object(view)
    differ = [r for r, v in enumerate(views) if v != views[0]]
    if differ:
        seen = "; ".join(f"rank {r}: config.toml {'found' if v[0] else 'missing'}, latest checkpoint {v[1]}"
                         for r, v in enumerate(views) if r == 0 or r in differ)
        raise ckpt.CheckpointError(
            f"{out}: the processes do not see the same run directory (rank(s) {differ} differ from rank 0: "
            f"{seen}); a multi-machine --resume needs the run directory on a shared filesystem, or rank 0's "
            f"copied to the same path on every machine")


def _run_meta(cfg: dict[str, Any], trainer: Trainer) -> dict[str, Any]:
    """The summary's description of a run: dataset, model, seed, parameter count, threads, and ``as_run``: what
    the config's planned values became on this run (``augment_from_epoch``, 0-based, moved with the cycles on a
    run of another length; the schedule's cycles in optimizer steps)."""
    as_run: dict[str, Any] = {}
    start = getattr(trainer.train_loader, "transform_from_epoch", None)
    if cfg["data"]["augment"] and start is not None:
        as_run["augment_from_epoch"] = start
    cycles = getattr(trainer.scheduler, "cycles", None)
    if cycles:
        as_run["cycle_steps"] = [n for _, n, _ in cycles]
    return {"dataset": cfg["data"]["name"], "model": cfg["model"]["name"], "task": trainer.task.name,
            "seed": cfg["seed"],
            "parameters": sum(p.numel() for p in trainer.model.parameters()), "threads": torch.get_num_threads(),
            "probe": getattr(trainer, "probe", None), "as_run": as_run}


def _run_hogwild(cfg: dict[str, Any], out: Path, resume: bool) -> dict[str, Any]:
    """``parallel.mode = "hogwild"`` (lock-free workers on a shared model) or ``"async"`` (a parameter server and
    asynchronous workers over rpc, checkpointed by the server at each epoch's worth of updates and resumable),
    then one evaluation, a checkpoint and the report."""
    import os
    from ..parallel.async_sgd import run_async
    from ..parallel.hogwild import run_hogwild
    mode = cfg["parallel"]["mode"]
    if resume and mode == "hogwild":
        raise ckpt.CheckpointError("a hogwild run cannot be resumed mid-run (its workers write without a "
                                   "consistent snapshot); start a new run")
    workers = cfg["parallel"]["workers"]
    # Each worker's gradient is the mean over 1/K of a global batch, and K of them are applied per global batch:
    # at the configured rate the weights would move K times as far as in one synchronous step. The rate is
    # divided by K (the linear scaling rule run backwards; Goyal et al. 2017), so an epoch moves them as far.
    cfg = {**cfg, "lr": cfg["lr"] / workers}
    trainer = build_trainer(cfg, out_dir=out, progress=False)
    ckpt.atomic_write_json(out / "data_stats.json", trainer.data_stats)
    # how each worker builds its own trainer (the parallel package never imports this recipe)
    worker_trainer = functools.partial(build_trainer, cfg, progress=False, evaluate=False)
    extra: dict[str, Any] = {}
    if mode == "async":
        if cfg["batch_size"] % workers:
            raise ConfigError("batch_size", f"the global batch {cfg['batch_size']} must divide into "
                                            f"parallel.workers={workers} asynchronous workers")
        state = None
        if resume:
            trainer.resume(out)
            state = trainer.extra_state.get("async")
            if state is None:
                raise ckpt.CheckpointError(f"{trainer.last_checkpoint}: holds no parameter-server state")
        t0 = time.perf_counter() - trainer.train_seconds

        def on_epoch(server) -> None:                # under the server's lock: a consistent snapshot
            trainer.epoch = server.version // upe
            trainer.train_seconds = trainer.wall_seconds = time.perf_counter() - t0
            trainer.extra_state["async"] = server.state_dict()
            trainer.save_checkpoint()

        upe = workers * len(trainer.train_loader)     # updates per epoch: each worker takes 1/K of each batch
        # TRAINTRICKS_ASYNC_FAIL="rank:steps[,rank:steps]" crashes those workers after that many steps (tests)
        fail = os.environ.get("TRAINTRICKS_ASYNC_FAIL")
        fail_map = {int(a): int(b) for a, b in (kv.split(":") for kv in fail.split(","))} if fail else None
        res = run_async(worker_trainer, trainer.model, trainer.optimizer, workers, cfg["parallel"]["dc_lambda"],
                        fail=fail_map, scheduler=trainer.scheduler, updates_per_epoch=upe, on_epoch=on_epoch,
                        state=state)
        codes = res["exit_codes"]
        tau = res["staleness"]
        extra = {"updates": res["updates"], "mean_staleness": sum(tau) / max(len(tau), 1),
                 "max_staleness": max(tau, default=0), "dc_lambda": cfg["parallel"]["dc_lambda"],
                 "resumed": resume}
    else:
        t0 = time.perf_counter()
        codes = run_hogwild(worker_trainer, trainer.model, workers)
    trainer.train_seconds = trainer.wall_seconds = time.perf_counter() - t0
    trainer.epoch = cfg["epochs"]
    summary = trainer.finish()
    trainer.save_checkpoint()
    meta = _run_meta(cfg, trainer)
    summary = {**meta, "status": "finished", "parallel": mode, "workers": len(codes), "lr_per_update": cfg["lr"],
               "failed_workers": [r for r, c in enumerate(codes) if c != 0], **extra, **summary}
    ckpt.save_weights(trainer.model.state_dict(), out / "model.safetensors", {"epoch": str(trainer.epoch)})
    ckpt.atomic_write_json(out / "summary.json", summary)
    write_report(out, summary, [], to_toml(cfg))
    return summary
