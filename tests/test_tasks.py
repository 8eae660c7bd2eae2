"""Tasks (issue 16, "Tasks"): every metric against scikit-learn / numpy on random data split over batches, the
edge cases, the losses and datasets of each task, and the config key."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (accuracy_score, f1_score, hamming_loss, mean_absolute_error, precision_score, r2_score,
                             recall_score, root_mean_squared_error)

from traintricks.evaluation.tasks import (TASKS, Classification, MultiLabel, Regression, default_loss, get_task,
                                          loss_for_task, resolve_task)


def batches(*tensors, sizes=(7, 1, 13, 30, 9)):
    """Split tensors along dim 0 into uneven batches (a 1-example batch included)."""
    start = 0
    for s in sizes:
        yield tuple(t[start:start + s] for t in tensors)
        start += s
    assert start == len(tensors[0])


def run(task, outputs, targets, sizes=(7, 1, 13, 30, 9)):
    state = task.new_state()
    for o, t in batches(outputs, targets, sizes=sizes):
        task.update(state, o, t)
    return state, task.compute(state)


def test_registry_and_defaults():
    assert set(TASKS.names()) == {"classification", "regression", "multilabel"}
    assert isinstance(get_task(None), Classification) and isinstance(get_task("regression"), Regression)
    assert get_task("multilabel").primary == "micro_f1" and get_task("multilabel").mode == "max"
    assert get_task("regression").primary == "rmse" and get_task("regression").mode == "min"
    for name in TASKS.names():
        t = get_task(name)
        assert t.primary in t.metrics and t.metrics[t.primary] == t.mode
    assert [default_loss(n) for n in ("classification", "regression", "multilabel")] == [
        "cross_entropy", "l2", "bce_with_logits"]
    from traintricks.losses import LOSSES
    assert all(default_loss(n) in LOSSES for n in TASKS.names())


@pytest.mark.parametrize("d", [None, 1, 3])
def test_regression_metrics_match_sklearn_over_batches(d):
    g = torch.Generator().manual_seed(d or 0)
    shape = (60,) if d is None else (60, d)
    y = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 5     # a far-from-zero mean: SS_tot's shift matters
    p = y + torch.randn(shape, generator=g, dtype=torch.float64) * 0.7
    state, m = run(Regression(), p.float(), y.float())
    yn, pn = y.float().double().numpy(), p.float().double().numpy()
    assert set(m) == {"mae", "rmse", "r2"}
    assert m["mae"] == pytest.approx(mean_absolute_error(yn, pn), rel=1e-9)
    assert m["rmse"] == pytest.approx(root_mean_squared_error(yn, pn), rel=1e-9)
    assert m["r2"] == pytest.approx(r2_score(yn, pn), rel=1e-9)
    assert state["n"] == 60


def test_regression_takes_n1_outputs_for_n_targets_and_refuses_mismatches():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(60, generator=g)
    p = y[:, None] + 0.1 * torch.randn(60, 1, generator=g)
    _, m = run(Regression(), p, y)
    assert m["r2"] == pytest.approx(r2_score(y.numpy(), p[:, 0].numpy()), rel=1e-6)
    with pytest.raises(ValueError, match=r"regression: predictions of shape \(4, 2\) do not match"):
        Regression().update(Regression().new_state(), torch.zeros(4, 2), torch.zeros(4))


def test_regression_r2_of_constant_targets_follows_sklearn_force_finite():
    y = torch.full((60, 2), 3.0)
    exact = run(Regression(), y.clone(), y)[1]
    off = run(Regression(), y + torch.linspace(-1, 1, 60)[:, None], y)[1]
    assert exact["r2"] == r2_score(y.numpy(), y.numpy()) == 1.0
    assert off["r2"] == r2_score(y.numpy(), (y + torch.linspace(-1, 1, 60)[:, None]).numpy()) == 0.0
    # one constant dimension, one varying: averaged per dimension as sklearn does
    y2 = torch.stack([torch.full((60,), 2.0), torch.randn(60, generator=torch.Generator().manual_seed(3))], 1)
    p2 = y2 + 0.3 * torch.randn(60, 2, generator=torch.Generator().manual_seed(4))
    assert run(Regression(), p2, y2)[1]["r2"] == pytest.approx(r2_score(y2.numpy(), p2.numpy()), rel=1e-6)


def test_regression_state_stays_on_device_without_host_sync_in_update():
    t = Regression()
    state = t.new_state()
    t.update(state, torch.randn(5, 2), torch.randn(5, 2))
    assert all(isinstance(state[k], torch.Tensor) and state[k].dtype == torch.float64
               for k in ("abs", "sq", "sy", "syy", "shift"))


def _multilabel_data(n=60, labels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, labels, generator=g) < torch.linspace(0.1, 0.6, labels)).float()
    logits = torch.randn(n, labels, generator=g) + 2.5 * (2 * y - 1) * (torch.rand(n, labels, generator=g) < 0.8)
    y[:, -1] = 0                                            # a label never present (F1 0/0: zero_division=0)
    logits[:, -1] = -1.0
    return logits, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.long, torch.bool])
def test_multilabel_metrics_match_sklearn_over_batches(dtype):
    logits, y = _multilabel_data()
    state, m = run(MultiLabel(), logits, y.to(dtype))
    pred = (torch.sigmoid(logits) >= 0.5).int().numpy()
    yn = y.int().numpy()
    assert m["micro_f1"] == pytest.approx(f1_score(yn, pred, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(yn, pred, average="macro", zero_division=0))
    assert m["label_accuracy"] == pytest.approx(1 - hamming_loss(yn, pred))
    assert m["label_accuracy"] == pytest.approx(np.mean([accuracy_score(yn[:, j], pred[:, j]) for j in range(5)]))
    assert m["exact_match"] == pytest.approx(accuracy_score(yn, pred))
    per = MultiLabel().per_label(state)
    assert per["f1"] == pytest.approx(list(f1_score(yn, pred, average=None, zero_division=0)))
    assert per["precision"] == pytest.approx(list(precision_score(yn, pred, average=None, zero_division=0)))
    assert per["recall"] == pytest.approx(list(recall_score(yn, pred, average=None, zero_division=0)))
    assert per["support"] == yn.sum(0).tolist()
    assert per["accuracy"] == pytest.approx(list((yn == pred).mean(0)))


def test_multilabel_threshold_is_probability_one_half_and_shapes_are_checked():
    t = MultiLabel()
    _, m = run(t, torch.tensor([[0.0, -1e-6]]), torch.tensor([[1.0, 0.0]]), sizes=(1,))
    assert m["exact_match"] == 1.0                        # sigmoid(0) = 0.5 >= 0.5: present
    with pytest.raises(ValueError, match="multilabel: expected logits"):
        t.update(t.new_state(), torch.zeros(3, 4), torch.zeros(3))


def test_empty_states():
    assert Classification().compute(Classification().new_state()) == {"accuracy": 0.0}
    for t in (Regression(), MultiLabel()):
        m = t.compute(t.new_state())
        assert set(m) == set(t.metrics) and all(math.isnan(v) for v in m.values())
    assert MultiLabel().per_label(MultiLabel().new_state())["f1"] == []


def test_no_argmax_accuracy_for_regression_or_multilabel():
    y = torch.randn(60, 3)
    assert "accuracy" not in run(Regression(), y, y)[1]
    assert "accuracy" not in run(MultiLabel(), y, (y > 0).float())[1]


def test_resolve_task_and_loss_for_task():
    from traintricks.data import load_data
    assert resolve_task("auto", None) == "classification"
    assert resolve_task("auto", load_data("diabetes", val_size=0.1)) == "regression"
    assert resolve_task("multilabel", None) == "multilabel"
    with pytest.raises(KeyError, match="unknown task 'bogus'"):
        resolve_task("bogus")
    ce = {"name": "cross_entropy", "label_smoothing": 0.1, "penalties": ["l2"]}
    assert loss_for_task("classification", ce) is ce
    assert loss_for_task("regression", ce) == {"name": "l2", "penalties": ["l2"]}
    assert loss_for_task("multilabel", ce) == {"name": "bce_with_logits", "penalties": ["l2"]}
    assert loss_for_task("regression", {"name": "huber", "delta": 0.5}) == {"name": "huber", "delta": 0.5}
    with pytest.raises(ValueError, match="loss.name: 'sinkhorn' does not fit task 'regression'"):
        loss_for_task("regression", {"name": "sinkhorn"})


def test_task_datasets():
    from traintricks.data import load_data
    d = load_data("diabetes", val_size=0.1)
    assert d.task == "regression" and d.input_shape == (10,) and d.num_classes == 1
    assert d.train_y.shape == (len(d.train_x), 1) and d.train_y.dtype == torch.float32
    assert len(d.train_x) + len(d.val_x) + len(d.test_x) == 442
    ally = torch.cat([d.train_y, d.val_y])
    assert abs(float(ally.mean())) < 1e-5 and float(ally.std()) == pytest.approx(1.0, abs=1e-5)  # standardized
    m = load_data("digits_multilabel", val_size=0.1)
    c = load_data("digits", val_size=0.1)
    assert m.task == "multilabel" and c.task == "classification" and m.class_names == ["even", "ge5", "prime", "loop"]
    assert m.num_classes == 4 and m.test_y.shape == (len(c.test_y), 4) and torch.equal(m.test_x, c.test_x)
    digit = c.test_y
    assert torch.equal(m.test_y[:, 0].bool(), digit % 2 == 0)
    assert torch.equal(m.test_y[:, 1].bool(), digit >= 5)
    assert torch.equal(m.test_y[:, 2].bool(), torch.isin(digit, torch.tensor([2, 3, 5, 7])))
    assert torch.equal(m.test_y[:, 3].bool(), torch.isin(digit, torch.tensor([0, 6, 8, 9])))


def test_config_task_key():
    from traintricks.config import ConfigError, load_config
    assert load_config(None, [])["task"] == "auto"
    assert load_config(None, ["task=regression"])["task"] == "regression"
    with pytest.raises(ConfigError, match="config key 'task': must be auto or one of classification, multilabel"):
        load_config(None, ["task=ranking"])


def test_list_shows_the_tasks(capsys):
    from traintricks.cli import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "tasks (evaluation):" in out and "  regression " in out and "  multilabel " in out


def test_a_model_trained_with_each_task_loss_scores_well():
    """The pieces fit end to end without the Trainer: the dataset, the task's default loss, its metrics."""
    from traintricks.data import load_data
    from traintricks.losses import LOSSES
    for name in ("diabetes", "digits_multilabel"):
        torch.manual_seed(0)
        d = load_data(name, val_size=0.1)
        task = get_task(resolve_task("auto", d))
        loss_fn = LOSSES.get(default_loss(task))()
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(d.input_shape)), 32),
                                    torch.nn.ReLU(), torch.nn.Linear(32, d.num_classes))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            opt.zero_grad()
            loss_fn(model(d.train_x), d.train_y).backward()
            opt.step()
        state = task.new_state()
        with torch.no_grad():
            task.update(state, model(d.test_x), d.test_y)
        m = task.compute(state)
        if name == "diabetes":
            assert m["r2"] > 0.3 and m["rmse"] < 0.85          # a linear fit reaches about R^2 0.45 on this data
        else:
            assert m["micro_f1"] > 0.9
