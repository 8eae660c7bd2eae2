"""The report of a finished run (``traintricks report DIR``): one self-contained ``report.html`` plus its PNGs.

What it shows depends on the run's task (``summary.json``'s ``task``; absent means classification; the keys a run
writes for each task are listed in :mod:`traintricks.evaluation.tasks`).

**Classification** shows the learning curves, the **confusion matrix** ``C[i, j]`` = number of test examples of class ``i``
predicted as ``j`` and the **per-class accuracy** ``C[i, i] / sum_j C[i, j]`` (recomputed from the saved model on
the test set, with the run's own evaluation settings), the **learning-rate schedule** at every optimizer step (the
run's scheduler replayed from its config), and the **gradient-norm history** (the global L2 norm of the gradient
before any gradient transform, mean and max per epoch, from ``metrics.jsonl``). The numbers also go to
``report.json``.

**Regression and multi-label** runs show their task's metrics instead (never an arg-max accuracy): the test metrics
recomputed from ``model.safetensors`` through the task (:class:`~traintricks.evaluation.tasks.Task`) next to the
run's own ``test_<metric>``, learning curves of the loss and of every metric of the task, and

* regression: **predicted vs true** on the test set (one scatter per target dimension, up to 4, with the
  identity line) and the **residual histogram** ``prediction - target``;
* multi-label: **per-label** precision, recall, F1, accuracy and support on the test set
  (:meth:`~traintricks.evaluation.tasks.MultiLabel.per_label`).

The learning-rate schedule is replayed per step when the run's trainer can be rebuilt from its config, else taken
per epoch from ``metrics.jsonl`` (the page says which, and why); the gradient-norm history is as for
classification. The numbers go to ``report.json`` (``task``, ``test_metrics``, ``per_label`` for multi-label,
``lr_per_step`` or ``lr_per_epoch``, ``grad_norm``, ``summary``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .html import esc, image, page, pyplot, savefig, table


class ReportError(RuntimeError):
    """The directory is not a finished run (the message names the missing file)."""


#: the keys ``traintricks report RUN --set`` may change: where the run's data and model code are now (moved,
#: renamed), never what the run was (its weights must still load into the model, strictly)
RELOCATABLE = ("data.root", "data.factory", "model.name")


def load_run_config(run_dir: str | Path, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The config of the run in ``run_dir`` (its ``config.toml``), with ``sets`` (``key=value``, only the
    :data:`RELOCATABLE` keys) applied: the run's data or model module found where it is now. Raises
    ``ConfigError`` naming a key that is not relocatable, or naming ``model.name`` / ``data.factory`` when the
    run's module does not import, with what to do (run from the directory the run was started in, put the
    module on ``PYTHONPATH``, or ``--set`` its new import path)."""
    from ..config import ConfigError, load_config
    run_dir = Path(run_dir)
    for item in sets:
        key = item.partition("=")[0].strip()
        if key not in RELOCATABLE:
            raise ConfigError(key, f"report --set takes only where the run's data and model code are now "
                                   f"({', '.join(RELOCATABLE)}); the rest is the run's own config.toml")
    if not (run_dir / "config.toml").is_file():
        raise ReportError(f"{run_dir / 'config.toml'} not found; is {run_dir} a finished traintricks run?")
    try:
        return load_config(run_dir / "config.toml", list(sets))
    except ConfigError as e:
        if e.key not in ("model.name", "data.factory"):
            raise
        raw = str(e).split(": ", 1)[1] if ": " in str(e) else str(e)
        raise ConfigError(e.key, f"{raw} -- {_moved_hint(run_dir, e.key, 'module')}") from None


def _moved_hint(run_dir: Path, key: str, what: str) -> str:
    """What to do when a run's data or module is not where its ``config.toml`` says."""
    import os
    if what == "module":
        return (f"the run in {run_dir} was trained with it; if the module was renamed or its directory moved, "
                f"name it where it is now: traintricks report {run_dir} --set {key}=...")
    return (f"the run in {run_dir} was trained with it; relative paths are read from the working directory "
            f"(now {os.getcwd()}): run from the directory the run was started in, or if the data moved, name its "
            f"new place: traintricks report {run_dir} --set {key}=...")


def load_run_data(run_dir: str | Path, cfg: dict[str, Any]):
    """The dataset of a run's (relocated) config; a ``DataError`` says how to point the report at moved data."""
    from ..data import DataError, data_from_config
    try:
        return data_from_config(cfg)
    except DataError as e:
        key = "data.factory" if cfg["data"]["name"] == "python" else "data.root"
        raise DataError(f"{e} -- {_moved_hint(Path(run_dir), key, 'data')}") from None


def _read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    for f in ("config.toml", "summary.json", "model.safetensors"):
        if not (run_dir / f).is_file():
            raise ReportError(f"{run_dir / f} not found; is {run_dir} a finished traintricks run?")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{run_dir / 'summary.json'}: not valid JSON ({e})") from None
    history = []
    if (run_dir / "metrics.jsonl").is_file():
        for i, line in enumerate((run_dir / "metrics.jsonl").read_text().splitlines()):
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:
                raise ReportError(f"{run_dir / 'metrics.jsonl'}: line {i + 1} is not valid JSON") from None
    return summary, history


@torch.no_grad()
def confusion_matrix(trainer, loader, num_classes: int) -> torch.Tensor:
    """``C[i, j]``: examples of class ``i`` predicted as ``j`` by the trainer's evaluated model."""
    model = trainer.eval_model
    model.eval()
    c = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in loader:
        x, y = trainer.to_device(x, y)
        idx = y.cpu() * num_classes + trainer.eval_logits(x).argmax(1).cpu()
        c += torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
    return c


def lr_per_step(trainer, epochs: int) -> list[float]:
    """The learning rate of every optimizer step of a run: its freshly built scheduler stepped through."""
    import warnings
    lrs = []
    updates = trainer.updates_per_epoch()
    with warnings.catch_warnings():          # stepping a scheduler with no optimizer step is the point here
        warnings.simplefilter("ignore", UserWarning)
        for e in range(epochs):
            if hasattr(trainer.scheduler, "set_epoch"):
                trainer.scheduler.set_epoch(e, trainer.train_loader)
                updates = trainer.updates_per_epoch()
            for _ in range(updates):
                lrs.append(trainer.current_lr())
                if trainer.scheduler is not None:
                    trainer.scheduler.step()
    return lrs


def render_run_report(run_dir: str | Path, sets: Sequence[str] = ()) -> Path:
    """Write ``report.html``, ``report.json`` and the PNGs of the finished run in ``run_dir``; return the HTML path.

    ``sets``: ``key=value`` overrides of where the run's data and model code are now (:data:`RELOCATABLE`), for a
    run whose data folder or model module moved; see :func:`load_run_config`."""
    from ..training import checkpoint as ckpt
    from ..training.recipe import build_trainer
    from ..training.report import plot_curves

    run_dir = Path(run_dir)
    summary, history = _read_run(run_dir)
    cfg = load_run_config(run_dir, sets)
    data = load_run_data(run_dir, cfg)
    if summary.get("task", "classification") != "classification":
        return _render_task_report(run_dir, summary, history, cfg, data)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer({**cfg, "parallel": {**cfg["parallel"], "mode": "sync"}}, data=data, progress=False)
    trainer.eval_model.load_state_dict(ckpt.load_weights(run_dir / "model.safetensors"))
    epochs = int(summary.get("epochs", cfg["epochs"]))
    trainer.epoch = epochs                 # evaluated as at the run's end (e.g. flip TTA from an epoch on)
    trainer.after_training = True          # ... and as after training (tta_shift's views), like summary.json
    names = data.class_names
    k = len(names)
    conf = confusion_matrix(trainer, trainer.test_loader, k)
    per_class = (conf.diag().double() / conf.sum(1).clamp(min=1)).tolist()
    accuracy = conf.diag().sum().item() / max(conf.sum().item(), 1)
    lrs = lr_per_step(trainer, epochs)
    plt = pyplot()

    pngs: dict[str, Path] = {}
    if history:
        pngs["curves"] = plot_curves(history, run_dir / "curves.png", title=f"{summary.get('dataset')} / "
                                                                             f"{summary.get('model')}")
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    frac = conf.double() / conf.sum(1, keepdim=True).clamp(min=1)
    ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    pngs["confusion"] = savefig(fig, run_dir / "confusion.png")

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * k), 3.2))
    ax.bar(range(k), [100 * a for a in per_class])
    ax.axhline(100 * accuracy, ls="--", c="k", lw=1, label=f"overall {100 * accuracy:.2f}%")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, 100 * min(per_class) - 10), 100)
    ax.legend(loc="lower right")
    fig.tight_layout()
    pngs["per_class"] = savefig(fig, run_dir / "per_class.png")

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(1, len(lrs) + 1), lrs)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"schedule: {cfg['schedule']['name']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    pngs["lr_schedule"] = savefig(fig, run_dir / "lr_schedule.png")

    if (gn_png := _grad_norm_png(history, run_dir, plt)) is not None:
        pngs["grad_norm"] = gn_png

    numbers = {"test_accuracy": accuracy, "per_class_accuracy": dict(zip(names, per_class)),
               "confusion": conf.tolist(), "class_names": names, "lr_per_step": lrs,
               "grad_norm": [r.get("grad_norm") for r in history], "summary": summary}
    ckpt.atomic_write_json(run_dir / "report.json", numbers)

    head = [{"metric": k_, "value": (f"{v:.4f}" if isinstance(v, float) else v)} for k_, v in summary.items()
            if not isinstance(v, (dict, list))]
    worst = sorted(range(k), key=lambda i: per_class[i])[:3]
    confused = sorted(((conf[i, j].item(), names[i], names[j]) for i in range(k) for j in range(k) if i != j),
                      reverse=True)[:5]
    sections = [("Summary", table(head, ["metric", "value"]))]
    if "curves" in pngs:
        sections.append(("Learning curves", image(pngs["curves"], "curves") + _image_sizes(history)))
    sections += [
        ("Confusion matrix", image(pngs["confusion"], "confusion") +
         "<p>Most confused (true &rarr; predicted): " +
         "; ".join(f"{esc(a)} &rarr; {esc(b)} ({n})" for n, a, b in confused) + "</p>"),
        ("Per-class accuracy", image(pngs["per_class"], "per class") + table(
            [{"class": names[i], "accuracy": f"{100 * per_class[i]:.2f}%", "examples": int(conf[i].sum())}
             for i in range(k)], ["class", "accuracy", "examples"]) +
         f"<p>Weakest: {', '.join(esc(names[i]) for i in worst)}.</p>"),
        ("Learning-rate schedule", image(pngs["lr_schedule"], "lr")),
    ]
    if "grad_norm" in pngs:
        sections.append(_grad_norm_section(pngs["grad_norm"]))
    sections.append(("Config", f"<pre>{esc((run_dir / 'config.toml').read_text())}</pre>"))
    title = f"traintricks run: {summary.get('dataset', '')} / {summary.get('model', '')} ({run_dir.name})"
    intro = f"Test accuracy recomputed from model.safetensors: <b>{100 * accuracy:.2f}%</b>."
    out = run_dir / "report.html"
    ckpt.atomic_write_text(out, page(title, sections, intro))
    return out


def _image_sizes(history: list[dict[str, Any]]) -> str:
    """Progressive resizing's image height per epoch (``image_size`` in metrics.jsonl), as runs of epochs:
    "20 px: epochs 1-4; 28 px: epochs 5-24" ("" when no epoch recorded one)."""
    spans: list[list[int]] = []             # [size, first epoch, last epoch]
    for r in history:
        if "image_size" not in r:
            continue
        if spans and spans[-1][0] == r["image_size"] and spans[-1][2] == r["epoch"] - 1:
            spans[-1][2] = r["epoch"]
        else:
            spans.append([r["image_size"], r["epoch"], r["epoch"]])
    if not spans:
        return ""
    text = "; ".join(f"{size} px: epoch{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}" for size, a, b in spans)
    return f"<p>Training image height (progressive resizing): {esc(text)}</p>"


def _grad_norm_png(history: list[dict[str, Any]], run_dir: Path, plt) -> Path | None:
    gn = [r for r in history if "grad_norm" in r]
    if not gn:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["epoch"] for r in gn], [r["grad_norm"] for r in gn], "o-", ms=3, label="mean per epoch")
    if all("grad_norm_max" in r for r in gn):
        ax.plot([r["epoch"] for r in gn], [r["grad_norm_max"] for r in gn], "^--", ms=3, label="max per epoch")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient L2 norm")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return savefig(fig, run_dir / "grad_norm.png")


def _grad_norm_section(png: Path) -> tuple[str, str]:
    return ("Gradient-norm history", image(png, "gradient norm") +
            "<p>Global L2 norm of the gradient before clipping or other transforms.</p>")


def plot_task_curves(history: list[dict[str, Any]], task, path: Path, title: str = "") -> Path:
    """Loss, every metric of ``task`` (``train_``/``val_``/``test_<metric>`` where recorded) and the learning rate
    against the epoch."""
    plt = pyplot()
    metrics = ["loss", *task.metrics]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(3.4 * (len(metrics) + 1), 3.4))
    ep = [r["epoch"] for r in history]
    for ax, metric in zip(axes, metrics):
        for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
            pts = [(r["epoch"], r[f"{split}_{metric}"]) for r in history if f"{split}_{metric}" in r]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric + (" (primary)" if metric == task.primary else ""))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if all("lr" in r for r in history):
        axes[-1].plot(ep, [r["lr"] for r in history], marker="o", ms=3)
    axes[-1].set_xlabel("epoch")
    axes[-1].set_ylabel("learning rate (end of epoch)")
    axes[-1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return savefig(fig, path)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's outputs (eval mode, on its own device) for every row of ``x``, on the CPU."""
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _render_task_report(run_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]],
                        cfg: dict[str, Any], data) -> Path:
    """The report of a regression or multi-label run (see the module docstring)."""
    import warnings

    from ..training import checkpoint as ckpt
    from ..training.recipe import build_model, build_trainer
    from .tasks import get_task

    task = get_task(summary["task"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, data.input_shape, data.num_classes)
    model.load_state_dict(ckpt.load_weights(run_dir / "model.safetensors"))
    out = predict(model, data.test_x)
    state = task.new_state()
    task.update(state, out, data.test_y)
    metrics = task.compute(state)
    plt = pyplot()
    pngs: dict[str, Path] = {}
    numbers: dict[str, Any] = {"task": task.name, "test_metrics": metrics}
    sections: list[tuple[str, str]] = []
    head = [{"metric": k_, "value": _fmt(v)} for k_, v in summary.items() if not isinstance(v, (dict, list))]
    sections.append(("Summary", table(head, ["metric", "value"])))
    rows = [{"metric": m + (" (primary)" if m == task.primary else ""), "recomputed": _fmt(metrics[m]),
             "run": _fmt(summary.get(f"test_{m}", "")), "better": "higher" if mode == "max" else "lower"}
            for m, mode in task.metrics.items()]
    sections.append(("Test metrics", table(rows, ["metric", "recomputed", "run", "better"],
                                           ["metric", "recomputed from model.safetensors", "summary.json",
                                            "better is"])))
    if history:
        pngs["curves"] = plot_task_curves(history, task, run_dir / "curves.png",
                                          title=f"{summary.get('dataset')} / {summary.get('model')}")
        sections.append(("Learning curves", image(pngs["curves"], "curves")))

    if task.name == "regression":
        from .tasks import Regression
        p, y = Regression.pairs(out, data.test_y)
        names = data.class_names if len(data.class_names) == p.shape[1] else [str(i) for i in range(p.shape[1])]
        k = min(p.shape[1], 4)
        fig, axes = plt.subplots(1, k, figsize=(4 * k, 4), squeeze=False)
        for j, ax in enumerate(axes[0]):
            ax.scatter(y[:, j].numpy(), p[:, j].numpy(), s=8, alpha=0.6)
            lo, hi = float(min(y[:, j].min(), p[:, j].min())), float(max(y[:, j].max(), p[:, j].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = target")
            ax.set_xlabel(f"true {names[j]}")
            ax.set_ylabel(f"predicted {names[j]}")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle("predicted vs true (test)")
        fig.tight_layout()
        pngs["scatter"] = savefig(fig, run_dir / "pred_vs_true.png")
        res = (p - y).flatten()
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(res.numpy(), bins=40)
        ax.axvline(0, c="k", lw=1)
        ax.set_xlabel("residual (prediction - target)")
        ax.set_ylabel("test examples")
        fig.tight_layout()
        pngs["residuals"] = savefig(fig, run_dir / "residuals.png")
        numbers["residual_mean"], numbers["residual_std"] = float(res.mean()), float(res.std()) if len(res) > 1 else 0.0
        sections += [("Predicted vs true", image(pngs["scatter"], "predicted vs true") +
                      (f"<p>First {k} of {p.shape[1]} target dimensions.</p>" if k < p.shape[1] else "")),
                     ("Residuals", image(pngs["residuals"], "residuals") +
                      f"<p>Mean {numbers['residual_mean']:.4f}, standard deviation {numbers['residual_std']:.4f} "
                      f"over {len(res)} test values.</p>")]
    elif task.name == "multilabel":
        per = task.per_label(state)
        names = data.class_names if len(data.class_names) == len(per["f1"]) else [str(i) for i in range(len(per["f1"]))]
        numbers["per_label"] = {"labels": names, **per}
        k = len(names)
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * k + 2), 3.4))
        w = 0.27
        for i, m in enumerate(("precision", "recall", "f1")):
            ax.bar([j + (i - 1) * w for j in range(k)], [100 * v for v in per[m]], w, label=m)
        ax.set_xticks(range(k), names, rotation=45, ha="right")
        ax.set_ylabel("test (%)")
        ax.set_ylim(0, 115)
        ax.set_yticks(range(0, 101, 20))
        ax.legend(loc="upper center", ncol=3, fontsize=8)
        fig.tight_layout()
        pngs["per_label"] = savefig(fig, run_dir / "per_label.png")
        sections.append(("Per-label metrics", image(pngs["per_label"], "per label") + table(
            [{"label": names[j], "precision": f"{100 * per['precision'][j]:.2f}%",
              "recall": f"{100 * per['recall'][j]:.2f}%", "f1": f"{100 * per['f1'][j]:.2f}%",
              "accuracy": f"{100 * per['accuracy'][j]:.2f}%", "support": per["support"][j]} for j in range(k)],
            ["label", "precision", "recall", "f1", "accuracy", "support"]) +
            "<p>A label is predicted present when sigmoid(logit) &ge; 0.5; support = test examples with it.</p>"))

    try:                                    # the schedule replayed per step needs the run's trainer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = build_trainer({**cfg, "parallel": {**cfg["parallel"], "mode": "sync"}}, data=data,
                                    progress=False)
            lrs = lr_per_step(trainer, int(summary.get("epochs", cfg["epochs"])))
        numbers["lr_per_step"], x_label, note = lrs, "optimizer step", ""
    except Exception as e:                  # noqa: BLE001 -- the report still shows the recorded rates
        lrs = [r["lr"] for r in history if "lr" in r]
        numbers["lr_per_epoch"], x_label = lrs, "epoch"
        note = (f"<p>Per epoch from metrics.jsonl: the run's trainer could not be rebuilt to replay the schedule "
                f"per step ({esc(type(e).__name__)}: {esc(e)}).</p>")
    if lrs:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(range(1, len(lrs) + 1), lrs)
        ax.set_xlabel(x_label)
        ax.set_ylabel("learning rate")
        ax.set_title(f"schedule: {cfg['schedule']['name']}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        pngs["lr_schedule"] = savefig(fig, run_dir / "lr_schedule.png")
        sections.append(("Learning-rate schedule", image(pngs["lr_schedule"], "lr") + note))
    if (gn_png := _grad_norm_png(history, run_dir, plt)) is not None:
        sections.append(_grad_norm_section(gn_png))
    numbers["grad_norm"] = [r.get("grad_norm") for r in history]
    numbers["summary"] = summary
    ckpt.atomic_write_json(run_dir / "report.json", numbers)
    sections.append(("Config", f"<pre>{esc((run_dir / 'config.toml').read_text())}</pre>"))
    title = f"traintricks run: {summary.get('dataset', '')} / {summary.get('model', '')} ({run_dir.name})"
    intro = (f"Task: <b>{esc(task.name)}</b>. Test {esc(task.primary)} recomputed from model.safetensors: "
             f"<b>{metrics[task.primary]:.4f}</b> ({'higher' if task.mode == 'max' else 'lower'} is better); "
             + ", ".join(f"{esc(m)} {v:.4f}" for m, v in metrics.items() if m != task.primary) + ".")
    path = run_dir / "report.html"
    ckpt.atomic_write_text(path, page(title, sections, intro))
    return path
