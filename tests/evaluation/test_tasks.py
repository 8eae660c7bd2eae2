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


@pytest.mark.parametrize("name", ["classification", "regression", "multilabel"])
def test_update_never_reads_the_device(name):
    """update runs on the meta device (any .item()/bool(tensor)/float(tensor) would raise there)."""
    t = get_task(name)
    state = t.new_state()
    out = torch.randn(6, 3, device="meta")
    y = torch.zeros(6, dtype=torch.long, device="meta") if name == "classification" else torch.randn(6, 3, device="meta")
    t.update(state, out, y)
    t.update(state, out, y)
    assert state["n"] == 12


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


# ---------------------------------------------------------------- report and compare of each task's runs
def _fake_run(tmp_path, task, dataset, metrics_of_epoch):
    """A finished run directory written by hand: config.toml, model.safetensors (an untrained mlp), summary.json
    and metrics.jsonl with the keys the task's runs write (see traintricks.evaluation.tasks)."""
    import json
    from traintricks.config import load_config, to_toml
    from traintricks.data import load_data
    from traintricks.training import checkpoint as ckpt
    from traintricks.training.recipe import build_model
    run = tmp_path / f"run-{task}"
    run.mkdir()
    cfg = load_config(None, [f"data.name={dataset}", f"task={task}", "model.name=mlp", "model.hidden=[16]",
                             "data.augment=[]", "callbacks=[]", "epochs=3", "batch_size=64",
                             f"loss.name={default_loss(task)}", "data.val_size=0.1", "precision=fp32"])
    (run / "config.toml").write_text(to_toml(cfg))
    d = load_data(dataset, val_size=0.1)
    torch.manual_seed(0)
    model = build_model(cfg, d.input_shape, d.num_classes)
    ckpt.save_weights(model.state_dict(), run / "model.safetensors")
    hist = [{"epoch": e, "train_loss": 1.0 / e, "lr": 0.1 * e / 3, "grad_norm": 2.0 / e, "grad_norm_max": 3.0 / e,
             **{f"{split}_{k}": v * (1 + 0.1 * e) for split in ("val", "test") for k, v in metrics_of_epoch.items()},
             "val_loss": 1.1 / e, "test_loss": 1.2 / e} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
    summary = {"dataset": dataset, "model": "mlp", "task": task, "status": "finished", "epochs": 3, "best_epoch": 3,
               "train_seconds": 1.0, "test_loss": 0.4, **{f"test_{k}": v for k, v in metrics_of_epoch.items()}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run, model, d


def test_report_of_a_regression_run_shows_its_metrics_and_no_confusion_matrix(tmp_path):
    import json
    from traintricks.evaluation.report import predict, render_run_report
    run, model, d = _fake_run(tmp_path, "regression", "diabetes", {"rmse": 0.8, "mae": 0.6, "r2": 0.3})
    html = render_run_report(run).read_text()
    for part in ("Test metrics", "rmse (primary)", "mae", "r2", "Predicted vs true", "Residuals",
                 "Learning-rate schedule", "Gradient-norm history", "Task: <b>regression</b>"):
        assert part in html, part
    body = html.split("<h2>Config</h2>")[0]                  # the config's own text aside
    for absent in ("Confusion matrix", "Per-class accuracy", "confusion", "accuracy"):
        assert absent not in body, absent
    rep = json.loads((run / "report.json").read_text())
    p = predict(model, d.test_x).numpy()
    y = d.test_y.numpy()
    assert rep["task"] == "regression"
    assert rep["test_metrics"]["rmse"] == pytest.approx(root_mean_squared_error(y, p), rel=1e-6)
    assert rep["test_metrics"]["r2"] == pytest.approx(r2_score(y, p), rel=1e-6)
    assert rep["residual_mean"] == pytest.approx(float((p - y).mean()), abs=1e-6)
    for png in ("pred_vs_true.png", "residuals.png", "curves.png", "lr_schedule.png", "grad_norm.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    assert not (run / "confusion.png").exists()


def test_report_of_a_multilabel_run_shows_per_label_metrics(tmp_path):
    import json
    from traintricks.evaluation.report import predict, render_run_report
    run, model, d = _fake_run(tmp_path, "multilabel", "digits_multilabel",
                              {"micro_f1": 0.7, "macro_f1": 0.6, "label_accuracy": 0.8, "exact_match": 0.4})
    html = render_run_report(run).read_text()
    for part in ("micro_f1 (primary)", "macro_f1", "label_accuracy", "exact_match", "Per-label metrics",
                 "even", "ge5", "prime", "loop", "support"):
        assert part in html, part
    assert "Confusion matrix" not in html and "Per-class accuracy" not in html
    rep = json.loads((run / "report.json").read_text())
    pred = (predict(model, d.test_x) >= 0).int().numpy()
    y = d.test_y.int().numpy()
    assert rep["test_metrics"]["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert rep["per_label"]["labels"] == ["even", "ge5", "prime", "loop"]
    assert rep["per_label"]["f1"] == pytest.approx(list(f1_score(y, pred, average=None, zero_division=0)))


def _fake_compare_runs(task, metric, values):
    """Finished compare runs (two variants x two seeds) as run_compare collects them, without training."""
    runs = []
    for (variant, seed), v in values.items():
        hist = [{"epoch": e, "train_loss": 1.0 / e, f"val_{metric}": v + 0.1 * e} for e in (1, 2)]
        summary = {"status": "finished", f"test_{metric}": v, "train_seconds": 2.0}
        if task != "classification":
            summary["task"] = task
        runs.append({"variant": variant, "values": {"x": variant}, "seed": seed, "status": "finished",
                     "summary": summary, "history": hist, "peak_rss_mb": 100.0, "dir": f"r/{variant}/{seed}"})
    return runs


@pytest.mark.parametrize("task,metric", [("regression", "rmse"), ("multilabel", "micro_f1"),
                                         ("classification", "accuracy")])
def test_compare_uses_the_task_primary_metric(tmp_path, task, metric):
    import json
    from traintricks.evaluation.compare import _aggregate, write_compare_report
    values = {("a", 0): 0.5, ("a", 1): 0.7, ("b", 0): 0.9, ("b", 1): 0.8}
    result = _aggregate([("x", ["a", "b"])], _fake_compare_runs(task, metric, values), 2, None, [], 1.0)
    assert result["task"] == task and result["metric"] == metric
    a = result["variants"][0]
    assert a[f"test_{metric}_mean"] == pytest.approx(0.6) and a[f"test_{metric}_std"] == pytest.approx(0.02 ** 0.5)
    best = min if get_task(task).mode == "min" else max
    assert a[f"best_val_{metric}_mean"] == pytest.approx((best(0.6, 0.7) + best(0.8, 0.9)) / 2)
    assert a["curves"][f"val_{metric}"] == pytest.approx([0.7, 0.8])
    html = write_compare_report(tmp_path, result).read_text()
    # lower RMSE wins; higher F1/accuracy; the variant named as written on the command line (key=value)
    want_best = "x=a" if task == "regression" else "x=b"
    if task == "classification":
        assert "final test acc % (mean ± std)" in html and "60.00 ± 14.14" in html
        assert f"Best final test accuracy: <b>{want_best}</b>" in html and "Task:" not in html
    else:
        assert f"Task: {task}, metric: {metric}" in html and f"Best final test {metric}: <b>{want_best}</b>" in html
        assert "accuracy" not in html.replace("label_accuracy", "")
        shown = "0.6000 ± 0.1414" if task == "regression" else "60.00 ± 14.14"
        assert shown in html
    assert json.loads((tmp_path / "compare.json").read_text())["metric"] == metric


def test_run_end_report_md_and_curves_use_the_task_metric(tmp_path):
    from traintricks.training.report import _primary_metric, plot_curves, write_report
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_rmse": 0.9 / e, "val_mae": 0.7 / e,
             "val_r2": 0.1 * e, "test_rmse": 0.95 / e, "lr": 0.1, "epoch_seconds": 1.0} for e in (1, 2)]
    assert _primary_metric(None, hist) == "rmse"
    assert _primary_metric(None, [{"epoch": 1, "val_accuracy": 0.5}]) == "accuracy"
    assert _primary_metric({"task": "multilabel"}, []) == "micro_f1"
    assert plot_curves(hist, tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = {"dataset": "diabetes", "model": "mlp", "task": "regression", "test_loss": 0.5, "test_rmse": 0.7,
               "test_mae": 0.5, "test_r2": 0.4, "epochs": 2, "best_epoch": 2, "stopped_early": False,
               "train_seconds": 1.0, "wall_seconds": 2.0, "device": "cpu", "precision": "fp32"}
    md = write_report(tmp_path, summary, hist, "").read_text()
    assert "**test rmse: 0.7000**" in md and "task: regression (test mae 0.5000, r2 0.4000)" in md
    assert "| val rmse |" in md and "| 2 | 0.5000 |  | 0.5500 | 0.4500 | 0.4750 |" in md and "acc" not in md


def test_classification_metrics_refuse_float_regression_targets():
    from traintricks.evaluation.tasks import Classification
    t = Classification()
    with pytest.raises(ValueError, match="task='regression'"):
        t.update(t.new_state(), torch.randn(8, 1), torch.randn(8))
    st = t.new_state()
    t.update(st, torch.randn(8, 3), torch.softmax(torch.randn(8, 3), 1))      # soft labels stay allowed
    assert st["n"] == 8
