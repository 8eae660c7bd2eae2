"""One registry convention (issue 16): every technique is its class or function bound once with its summary and
defaults; the config schema comes from the registries; ``callbacks = [...]`` replaces the ``[eval]``/``[ema]``
tables, which still load with a deprecation warning."""
import inspect
import warnings

import pytest
import torch

from traintricks.cli import main
from traintricks.config import (DEFAULTS, ConfigDeprecationWarning, ConfigError, component_options, load_config,
                                to_toml, with_factory_defaults)
from traintricks.catalog import all_registries
from traintricks.registry import Entry, Registry
from traintricks.training import CALLBACKS, build_trainer
from traintricks.training.callbacks import FlipTTA, GradNormQuantiles


def _entries():
    return [(reg, name, reg.entry(name)) for reg in all_registries() for name in reg.names()]


@pytest.mark.parametrize("reg, name, entry", _entries(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_entry_has_a_summary_and_its_options_from_one_place(reg, name, entry):
    assert isinstance(entry, Entry) and entry.name == name
    assert entry.summary and "\n" not in entry.summary, (reg.kind, name)
    opts = reg.options(name)
    # the options, their defaults and their annotations all come from the entry (its target's signature)
    assert reg.defaults(name) == {k: p.default for k, p in opts.items()}
    ann = component_options(reg, name)
    assert list(ann) == list(opts)
    missing = [k for k, a in ann.items() if a is inspect.Parameter.empty]
    assert not missing, f"{reg.kind} {name!r}: options without a type annotation: {missing}"
    assert not (set(opts) & entry.supplied), "builder-supplied arguments are never config options"
    sig = inspect.signature(reg.get(name))
    for k, p in opts.items():
        assert sig.parameters[k].default == p.default


@pytest.mark.parametrize("reg, name, entry", [e for e in _entries() if inspect.isclass(e[2].target)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_a_class_bound_entry_repeats_none_of_its_defaults(reg, name, entry):
    """Where a class is bound, every option's default is the class's own, except the values the entry binds on
    purpose (``defaults=``), and those differ from the class's (else they would be a second copy)."""
    cls_params = inspect.signature(entry.target).parameters
    for k, p in reg.options(name).items():
        if k in entry.defaults:
            assert entry.defaults[k] != cls_params[k].default, (name, k, "binds the class's own default again")
        else:
            assert p.default == cls_params[k].default, (name, k)


def test_registered_names_and_options_are_unchanged():
    """Every name of the registries before issue 16 still exists, with the same options and defaults (a few
    samples of each kind of registration: class + options subset, class + bound default, function)."""
    from traintricks.losses import LOSSES
    from traintricks.nn import ACTIVATIONS
    from traintricks.optim import OPTIMIZERS, TRANSFORMS
    from traintricks.data import AUGMENTATIONS, CURRICULA
    from traintricks.evaluation import EARLY_STOPPING
    from traintricks.models import MODELS
    assert OPTIMIZERS.defaults("sgd") == {"momentum": 0, "weight_decay": 0, "nesterov": False}
    assert set(OPTIMIZERS.defaults("newton")) == {"damping", "krylov_dim"}
    assert LOSSES.defaults("sinkhorn") == {"cost": None, "eps": 0.05, "iters": 50}        # bound: 50, class 100
    assert LOSSES.defaults("cross_entropy") == {"ignore_index": -100, "label_smoothing": 0.0, "class_weights": None}
    assert ACTIVATIONS.defaults("leaky_relu") == {"negative_slope": 0.01}
    assert ACTIVATIONS.get("relu")().inplace is True
    assert AUGMENTATIONS.defaults("random_erasing") == {"p": 0.5, "scale": (0.02, 0.33), "ratio": (0.3, 3.3)}
    assert TRANSFORMS.defaults("clip_norm") == {"max_norm": 1.0, "norm_type": 2.0}
    assert EARLY_STOPPING.defaults("gl") == {"alpha": 5.0, "monitor": "val_loss", "restore_best": True}
    assert CURRICULA.get("root")(scores="x").kind == "root" and "kind" not in CURRICULA.defaults("root")
    assert MODELS.defaults("cnn")["widths"] == (16, 32, 64)
    assert CALLBACKS.get("grad_norm_quantiles") is GradNormQuantiles          # a plain class entry is the class


def test_registry_register_forms_and_errors():
    R = Registry("thing")

    class Clip:
        """Clip things.

        More text."""

        def __init__(self, clip: float = 1.0, foreach: bool | None = None, *, eps: float = 1e-6) -> None:
            self.clip, self.foreach, self.eps = clip, foreach, eps

    R.register("clip", Clip)
    R.register("clip_tight", Clip, options=("clip",), defaults={"clip": 0.1}, summary="Clip at 0.1.")

    @R.register("fn")
    def fn(x: int = 3) -> int:
        """A function entry."""
        return x

    assert R.summary("clip") == "Clip things." and R.summary("clip_tight") == "Clip at 0.1."
    assert R.get("clip") is Clip and R.get("fn") is fn
    assert R.defaults("clip") == {"clip": 1.0, "foreach": None, "eps": 1e-6}
    assert R.defaults("clip_tight") == {"clip": 0.1}
    assert R.get("clip_tight")().clip == 0.1 and R.get("clip_tight")(clip=0.5).clip == 0.5
    assert list(inspect.signature(R.get("clip_tight")).parameters) == ["clip"]
    with pytest.raises(ValueError, match="registered twice"):
        R.register("fn", fn)
    with pytest.raises(ValueError, match="clipp is not an argument"):
        R.register("bad", Clip, defaults={"clipp": 2.0})
    with pytest.raises(KeyError, match="choose one of: clip, clip_tight, fn"):
        R.entry("nope")


def test_list_verbose_shows_summary_and_options_with_defaults(capsys):
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    assert "callbacks (training):" in out
    for name in CALLBACKS.names():
        assert f"  {name} " in out
    assert "decay=0.999, warmup=True, bn='recompute', bn_batches=20" in out       # ema: ModelEMA's defaults
    assert "momentum=0, weight_decay=0, nesterov=False" in out                    # sgd: SGD's defaults


# ------------------------------------------------------------------------------------------ the callbacks list
def test_default_recipe_has_flip_tta_in_its_callbacks_list():
    names = [c if isinstance(c, str) else c["name"] for c in DEFAULTS["callbacks"]]
    assert names == ["progressive_resizing", "tta_flip", "tta_shift"] and DEFAULTS["test_every_epoch"] is True
    # the recipe's parts agree: the resized epochs are planned for the run's length and lie inside the first
    # cycle, which ends where the augmentations (and the TTA) start
    resize, first = DEFAULTS["callbacks"][0], DEFAULTS["schedule"]["cycle_epochs"][0]
    assert resize["run_epochs"] == DEFAULTS["epochs"] == sum(DEFAULTS["schedule"]["cycle_epochs"])
    assert sum(resize["epochs"]) < first == DEFAULTS["data"]["augment_from_epoch"]
    assert resize["strict"] is False
    assert "eval" not in DEFAULTS and "ema" not in DEFAULTS and "parallel" in DEFAULTS


@pytest.mark.parametrize("item, key", [
    ('[{name = "bogus"}]', "callbacks[0].name"),
    ('["tta_flip", {name = "emma", decay = 0.9}]', "callbacks[1].name"),
    ('["bogus"]', "callbacks[0]"),
    ('[{name = "ema", decay = "high"}]', "callbacks[0].decay"),
    ('[{name = "ema", decy = 0.9}]', "callbacks[0].decy"),
    ('[{name = "tta_flip", from_epoch = 2}]', "callbacks[0].from_epoch"),    # supplied by the recipe
    ('[3]', "callbacks[0]"),
    ('"ema"', "callbacks"),
])
def test_callbacks_list_errors_name_the_entry(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"callbacks={item}"])
    assert e.value.key == key, str(e.value)


def test_callback_range_errors_name_the_option(tiny_cfg):
    with pytest.raises(ConfigError) as e:
        build_trainer(tiny_cfg('callbacks=[{name = "ema", decay = 1.5}]'), progress=False)
    assert e.value.key == "callbacks[0].decay"


def test_callbacks_are_built_from_the_registry(tiny_cfg):
    t = build_trainer(tiny_cfg('callbacks=["tta_flip", {name = "ema", decay = 0.8, bn = "copy"}, '
                               '{name = "grad_norm_quantiles", quantiles = [0.5]}]', 'data.augment=["flip"]',
                               "data.augment_from_epoch=1"), progress=False)
    assert t.ema is not None and t.ema.decay == 0.8 and t.ema.bn == "copy" and t.ema.warmup is True
    assert t.find_callback(FlipTTA).from_epoch == 1                      # data.augment_from_epoch
    assert t.find_callback(GradNormQuantiles).quantiles == [0.5]
    assert build_trainer(tiny_cfg(), progress=False).ema is None


# ------------------------------------------------------------------------------------------ the old tables
def _load_warns(overrides, match):
    with pytest.warns(ConfigDeprecationWarning, match=match) as rec:
        cfg = load_config(None, overrides)
    assert all("\n" not in str(w.message) for w in rec)
    return cfg


def test_old_eval_table_is_translated_with_a_warning_naming_the_replacement():
    cfg = _load_warns(["eval.tta_flip=false"], r"'eval.tta_flip' is deprecated; use callbacks = \[\"tta_flip\"\]")
    assert cfg["callbacks"] == [] and "eval" not in cfg
    cfg = _load_warns(["callbacks=[]", "eval.tta_flip=true"], "eval.tta_flip")
    assert cfg["callbacks"] == ["tta_flip"]
    cfg = _load_warns(["eval.test_every_epoch=false"], "use test_every_epoch")
    assert cfg["test_every_epoch"] is False and cfg["callbacks"] == ["tta_flip"]


def test_old_ema_table_is_translated_with_a_warning_naming_the_replacement():
    cfg = _load_warns(["ema.decay=0.9", "ema.bn=copy"], r"'ema' is deprecated; use callbacks = \[\{name = \"ema\"")
    assert cfg["callbacks"] == ["tta_flip", {"name": "ema", "decay": 0.9, "bn": "copy"}] and "ema" not in cfg
    cfg = _load_warns(['callbacks=[{name = "ema", decay = 0.9}]', "ema.decay=0.0"], "ema")
    assert cfg["callbacks"] == []                                               # decay 0 = off
    cfg = _load_warns(['callbacks=[{name = "ema", decay = 0.9}]', "ema.bn_batches=5"], "ema")
    assert cfg["callbacks"] == [{"name": "ema", "decay": 0.9, "bn_batches": 5}]
    cfg = _load_warns(["ema.warmup=false"], "ema")                               # no decay: the EMA stays off
    assert cfg["callbacks"] == ["tta_flip"]


def test_an_old_run_config_with_every_old_table_loads(tmp_path):
    """A config.toml written before issue 16 (to_toml of the old defaults): [eval], [ema] and [parallel]."""
    old = to_toml({k: v for k, v in load_config().items() if k not in ("callbacks", "test_every_epoch")})
    old += ('\n[eval]\ntta_flip = false\ntest_every_epoch = true\n\n'
            '[ema]\ndecay = 0.0\nwarmup = true\nbn = "recompute"\nbn_batches = 20\n')
    p = tmp_path / "config.toml"
    p.write_text(old)
    with pytest.warns(ConfigDeprecationWarning):
        cfg = load_config(p)
    assert cfg == load_config(None, ["callbacks=[]"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.write_text(to_toml(cfg))
        assert load_config(p) == cfg                                             # written in the new form


@pytest.mark.parametrize("override, key, replacement", [
    ("eval.tta_flop=true", "eval.tta_flop", "callbacks"),
    ("eval.tta_flip=3", "eval.tta_flip", "bool"),
    ("eval=3", "eval", "callbacks"),
    ("ema.bogus=1", "ema.bogus", "callbacks = [{name = \"ema\""),
    ("ema.decay=1.5", "ema.decay", "callbacks = [{name = \"ema\""),
    ("ema.bn=\"fancy\"", None, None),                     # a value only the EMA rejects: at build time
])
def test_old_keys_that_cannot_be_translated_fail_naming_key_and_replacement(override, key, replacement):
    if key is None:
        with pytest.warns(ConfigDeprecationWarning):
            load_config(None, [override])                 # no decay: the EMA is off, nothing to build
        return
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key and replacement in str(e.value)


def test_parallel_stays_a_run_mode_table():
    cfg = load_config(None, ["parallel.mode=hogwild"])
    assert cfg["parallel"]["mode"] == "hogwild"
    with pytest.raises(ConfigError) as e:
        load_config(None, ['callbacks=[{name = "parallel"}]'])
    assert e.value.key == "callbacks[0].name"


def test_printed_config_completes_callbacks_with_their_defaults(tmp_path):
    cfg = load_config(None, ['callbacks=["tta_flip", {name = "ema", decay = 0.9}, "grad_norm_quantiles"]'])
    full = with_factory_defaults(cfg)
    assert full["callbacks"] == ["tta_flip", {"name": "ema", "decay": 0.9, "warmup": True, "bn": "recompute",
                                              "bn_batches": 20},
                                 {"name": "grad_norm_quantiles", "quantiles": [0.5, 0.9, 0.99]}]
    p = tmp_path / "full.toml"
    p.write_text(to_toml(full))
    assert with_factory_defaults(load_config(p)) == full


# ------------------------------------------------------------------------------------- the default recipe
SHORT = ["data.name=digits", "epochs=2", "batch_size=64", "model.widths=[8, 16]", "model.blocks=[1, 1]",
         "precision=fp32", "channels_last=false", "data.augment_from_epoch=1", "threads=1"]


def _train(overrides):
    t = build_trainer(load_config(None, SHORT + overrides), progress=False)
    kinds = [type(c).__name__ for c in t.callbacks]
    t.fit()
    return kinds, t, t.eval_model.state_dict()


def test_default_recipe_resolves_and_trains_the_same_from_the_old_and_the_new_form():
    """The default recipe's callbacks of issue 16 (flip TTA from data.augment_from_epoch, no EMA, test every epoch; the
    shift TTA came later, and a config with an old table does not get it) and a short
    digits run's final weights are the same whether the config says it the old way ([eval]/[ema] tables, as the
    recipe did before issue 16) or the new way (callbacks list); with an EMA too."""
    with pytest.warns(ConfigDeprecationWarning):
        old = _train(["eval.tta_flip=true", "eval.test_every_epoch=true", "ema.decay=0.0"])
    assert "ShiftTTA" in _train([])[0] and "ShiftTTA" not in old[0]       # the old tables predate the shift TTA
    new = _train(['callbacks=["tta_flip"]'])
    assert old[0] == new[0] and "FlipTTA" in new[0] and "EMACallback" not in new[0]
    assert new[1].find_callback(FlipTTA).from_epoch == 1 and new[1].test_every_epoch
    untimed = lambda t: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in t.history]  # noqa: E731
    assert untimed(old[1]) == untimed(new[1])
    for k in new[2]:
        torch.testing.assert_close(old[2][k], new[2][k], rtol=0, atol=0)
    with pytest.warns(ConfigDeprecationWarning):
        old = _train(["ema.decay=0.9", "ema.bn=copy"])
    new = _train(['callbacks=["tta_flip", {name = "ema", decay = 0.9, bn = "copy"}]'])
    assert old[0] == new[0] and "EMACallback" in new[0]
    for k in new[2]:
        torch.testing.assert_close(old[2][k], new[2][k], rtol=0, atol=0)
