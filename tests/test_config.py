import pytest

from traintricks.config import ConfigError, default_config, load_config, parse_override, to_toml, validate
from traintricks.training import build_trainer


def test_defaults_are_valid_and_are_the_fashion_mnist_recipe():
    cfg = load_config()
    assert cfg["data"]["name"] == "fashion_mnist"
    assert cfg == validate(default_config())


@pytest.mark.parametrize("override, key", [
    ("epochz=3", "epochz"),
    ("data.nmae=digits", "data.nmae"),
    ("model.widthz=[1]", "model.widthz"),
    ("optim.betas=[0.9, 0.99]", "optim.betas"),         # an Adam option on SGD
    ("bogus.x=1", "bogus"),
])
def test_unknown_keys_are_named(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key
    assert f"'{key}'" in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("epochs=2.5", "epochs"), ("epochs=true", "epochs"), ("lr=fast", "lr"), ("batch_size=\"64\"", "batch_size"),
    ("model.widths=8", "model.widths"), ("model.widths=[8, 1.5]", "model.widths[1]"),
    ("channels_last=1", "channels_last"), ("data.augment=[3]", "data.augment[0]"),
    ("test_every_epoch=1", "test_every_epoch"), ('callbacks=[{name = "ema", decay = "x"}]', "callbacks[0].decay"),
    ("callbacks=\"tta_flip\"", "callbacks"),
])
def test_wrong_types_are_named(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key


@pytest.mark.parametrize("override, key", [
    ("epochs=0", "epochs"), ("lr=-0.1", "lr"), ("batch_size=0", "batch_size"), ("precision=fp8", "precision"),
    ("data.limit=-5", "data.limit"), ("data.name=imagenet", "data.name"), ("model.name=vgg", "model.name"),
    ("optim.name=adagradd", "optim.name"), ("data.augment=[\"rotate\"]", "data.augment[0]"),
    ("device=tpu", "device"), ('callbacks=[{name = "bogus"}]', "callbacks[0].name"),
    ("callbacks=[\"bogus\"]", "callbacks[0]"),
])
def test_impossible_values_are_named(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key


@pytest.mark.parametrize("override, key", [
    ("optim.momentum=1.5", "optim.momentum"), ("loss.label_smoothing=1.5", "loss.label_smoothing"),
    ("model.widths=[0, 4]", "model.widths"), ("schedule.pct_start=0", "schedule.pct_start"),
])
def test_range_errors_from_factories_name_the_option(tiny_cfg, override, key):
    with pytest.raises(ConfigError) as e:
        build_trainer(tiny_cfg(override), progress=False)
    assert e.value.key == key


def test_model_that_cannot_take_the_data_is_reported_before_training(tiny_cfg):
    # four 2x2 poolings cannot be applied to 8x8 digits
    with pytest.raises(ConfigError) as e:
        build_trainer(tiny_cfg("model.widths=[4, 4, 4, 4, 4]", "model.blocks=[1, 1, 1, 1, 1]"), progress=False)
    assert e.value.key == "model" and "(1, 8, 8)" in str(e.value)


def test_changing_a_component_name_drops_the_old_components_options():
    cfg = load_config(None, ["optim.name=adam", "optim.weight_decay=0.01"])
    assert cfg["optim"] == {"name": "adam", "weight_decay": 0.01, "decay_norm_and_bias": False}   # SGD's momentum/nesterov gone; the builder's key kept
    cfg = load_config(None, ["optim.nesterov=false"])                # same name: merged
    assert cfg["optim"]["nesterov"] is False and cfg["optim"]["momentum"] == 0.9


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('epochs = 4\n[model]\nname = "mlp"\nhidden = [32]\n[data]\nname = "digits"\n')
    cfg = load_config(p, ["epochs=5", "model.hidden=[16, 8]"])
    assert cfg["epochs"] == 5 and cfg["model"] == {"name": "mlp", "hidden": [16, 8]}
    assert cfg["data"]["name"] == "digits" and cfg["lr"] == default_config()["lr"]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_override_parsing():
    assert parse_override("lr=0.1") == {"lr": 0.1}
    assert parse_override("model.name=resnet") == {"model": {"name": "resnet"}}
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("x=true") == {"x": True}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ["data.augment=[\"flip\", {name = \"crop\", padding = 3}]", "model.name=preact_resnet",
                             "model.widths=[4, 8]", "model.blocks=[1, 2]"])
    p = tmp_path / "c.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg


def test_shipped_configs_are_valid():
    from pathlib import Path
    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert configs
    for p in configs:
        load_config(p)


def test_printed_config_lists_factory_defaults_and_loads_back(tmp_path):
    from traintricks.config import to_toml, with_factory_defaults
    cfg = load_config(None, ["optim.name=adamw"])
    full = with_factory_defaults(cfg)
    assert full["optim"]["betas"] == [0.9, 0.999] and full["optim"]["eps"] == 1e-8
    assert full["model"]["norm"] == "batchnorm"                      # a factory default the recipe does not write
    path = tmp_path / "full.toml"
    path.write_text(to_toml(full))
    again = load_config(str(path), [])
    assert with_factory_defaults(again) == full                      # the printed config is a valid config


def test_changing_a_component_name_keeps_the_keys_the_builder_applies_to_any_component():
    # a new user's layer_decay / wrappers / param_groups vanished when a later --set changed optim.name
    cfg = load_config(None, ["optim.layer_decay=0.5", 'optim.wrappers=["lookahead"]', "optim.momentum=0.5",
                             'model.regularization=["dropout"]', "optim.name=adamw", "model.name=mlp"])
    assert cfg["optim"]["layer_decay"] == 0.5 and cfg["optim"]["wrappers"] == ["lookahead"]
    assert "momentum" not in cfg["optim"]                    # SGD's own option went with it
    assert cfg["model"]["regularization"] == ["dropout"] and "widths" not in cfg["model"]
