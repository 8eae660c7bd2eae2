"""Layer-wise learning rates (optim.param_groups rules, optim.layer_decay): the groups' rates after building,
first match wins, the depth rule, schedules scaling every group proportionally, and the errors."""
from __future__ import annotations

import pytest
from torch import nn

from traintricks.config import ConfigError
from traintricks.optim import param_groups
from traintricks.training import build_trainer


def _lr_of(optimizer, model):
    """parameter name -> (lr, weight_decay) of its group."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {n: (where[id(p)]["lr"], where[id(p)]["weight_decay"]) for n, p in model.named_parameters()}


def test_rules_give_each_parameter_its_groups_rate_and_keep_the_decay_split(tiny_cfg):
    cfg = tiny_cfg('optim.param_groups=[{match = "head.*", lr_mult = 10}, {match = "features.0.*", lr_mult = 0.1}]',
                   "lr=0.1", "optim.weight_decay=0.001", "schedule.name=constant")
    tr = build_trainer(cfg, progress=False)
    lrs = _lr_of(tr.optimizer, tr.model)
    assert lrs["head.weight"][0] == lrs["head.bias"][0] == pytest.approx(1.0)
    assert lrs["features.0.weight"][0] == pytest.approx(0.01)
    assert lrs["features.2.0.weight"][0] == lrs["features.3.weight"][0] == pytest.approx(0.1)
    assert lrs["head.weight"][1] == 0.001 and lrs["head.bias"][1] == 0.0     # no decay on biases and norms
    assert lrs["features.2.0.weight"][1] == 0.0 and lrs["features.3.weight"][1] == 0.001
    assert sum(len(g["params"]) for g in tr.optimizer.param_groups) == len(list(tr.model.parameters()))


def test_the_first_matching_rule_wins_and_may_set_weight_decay():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    groups = param_groups(m, 0.1, rules=[{"match": "1.weight", "lr_mult": 2}, {"match": "1.*", "lr_mult": 3},
                                         {"match": "0.*", "weight_decay": 0.5}], lr=1.0)
    by = {id(p): g for g in groups for p in g["params"]}
    assert by[id(m[1].weight)]["lr"] == 2.0 and by[id(m[1].bias)]["lr"] == 3.0
    assert by[id(m[0].weight)]["weight_decay"] == 0.5 and by[id(m[0].bias)]["weight_decay"] == 0.5
    assert "lr" not in by[id(m[0].weight)]                    # multiplier 1: the optimizer's own rate


def test_layer_decay_scales_by_depth_from_the_head(tiny_cfg):
    tr = build_trainer(tiny_cfg("optim.layer_decay=0.5", "lr=0.2", "schedule.name=constant"), progress=False)
    lrs = {n: lr for n, (lr, _) in _lr_of(tr.optimizer, tr.model).items()}
    # the tiny CNN: features.0 (conv) + features.2.0 (its norm) | features.3 (conv) + features.4.0 | head
    assert lrs["head.weight"] == lrs["head.bias"] == pytest.approx(0.2)
    assert lrs["features.3.weight"] == lrs["features.4.0.weight"] == pytest.approx(0.1)
    assert lrs["features.0.weight"] == lrs["features.2.0.bias"] == pytest.approx(0.05)


def test_layer_decay_and_rules_multiply():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 2))
    groups = param_groups(m, 0.0, rules=[{"match": "3.*", "lr_mult": 4}], layer_decay=0.5, lr=1.0)
    by = {id(p): g.get("lr", 1.0) for g in groups for p in g["params"]}
    assert [by[id(p)] for p in m.parameters()] == [0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 4.0, 4.0]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "multicycle", "step"])
def test_schedules_scale_every_group_proportionally(tiny_cfg, schedule):
    extra = ["schedule.cycle_epochs=[1, 1]", "schedule.peaks=[1.0, 0.5]"] if schedule == "multicycle" else []
    tr = build_trainer(tiny_cfg('optim.param_groups=[{match = "head.*", lr_mult = 10}]', "optim.layer_decay=0.5",
                                f"schedule.name={schedule}", *extra), progress=False)
    opt, sched = tr.optimizer, tr.scheduler
    mults = [g.get("lr_mult", 1.0) for g in opt.param_groups]
    assert sorted(set(mults)) == [0.25, 0.5, 10.0] and len(mults) == 6       # x (decay, no decay)
    for _ in range(20):
        opt.step()
        sched.step()
        base = opt.param_groups[mults.index(10.0)]["lr"] / 10.0
        assert base > 0
        for g, m in zip(opt.param_groups, mults):
            assert g["lr"] == pytest.approx(base * m, rel=1e-9)


def test_no_rules_keeps_the_plain_decay_split():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    groups = param_groups(m, 0.01)
    assert [len(g["params"]) for g in groups] == [2, 4] and [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert all("lr" not in g for g in groups)


def test_bad_rules_are_config_errors_naming_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match=r"optim.param_groups.*param_groups\[1\].match 'backbone.\*' matches no"):
        build_trainer(tiny_cfg('optim.param_groups=[{match = "head.*"}, {match = "backbone.*", lr_mult = 0.1}]'),
                      progress=False)
    with pytest.raises(ConfigError, match=r"param_groups\[0\].lr_mult must be a positive"):
        build_trainer(tiny_cfg('optim.param_groups=[{match = "head.*", lr_mult = 0}]'), progress=False)
    with pytest.raises(ConfigError, match=r"param_groups\[0\]: unknown key 'lr'"):
        build_trainer(tiny_cfg('optim.param_groups=[{match = "head.*", lr = 0.1}]'), progress=False)
    with pytest.raises(ConfigError, match=r"param_groups\[0\]: needs a 'match'"):
        build_trainer(tiny_cfg('optim.param_groups=[{lr_mult = 2}]'), progress=False)
    with pytest.raises(ConfigError, match=r"optim.layer_decay.*\(0, 1\]"):
        build_trainer(tiny_cfg("optim.layer_decay=1.5"), progress=False)
    with pytest.raises(ConfigError, match="optim.layer_decay"):
        tiny_cfg('optim.layer_decay="much"')
    with pytest.raises(ConfigError, match="optim.layer_decay.*one rate"):
        build_trainer(tiny_cfg("optim.name=sgd_hd", "optim.layer_decay=0.5"), progress=False)
