"""The report of a finished run (``traintricks report DIR``): one self-contained ``report.html`` plus its PNGs.

It shows the learning curves, the **confusion matrix** ``C[i, j]`` = number of test examples of class ``i``
predicted as ``j`` and the **per-class accuracy** ``C[i, i] / sum_j C[i, j]`` (recomputed from the saved model on
the test set, with the run's own evaluation settings), the **learning-rate schedule** at every optimizer step (the
run's scheduler replayed from its config), and the **gradient-norm history** (the global L2 norm of the gradient
before any gradient transform, mean and max per epoch, from ``metrics.jsonl``). The numbers also go to
``report.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .html import esc, image, page, pyplot, savefig, table


class ReportError(RuntimeError):
    """The directory is not a finished run (the message names the missing file)."""


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
        x, y = trainer._to_device(x, y)
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


def render_run_report(run_dir: str | Path) -> Path:
    """Write ``report.html``, ``report.json`` and the PNGs of the finished run in ``run_dir``; return the HTML path."""
    from ..config import load_config
    from ..data import load_data
    from ..training import checkpoint as ckpt
    from ..training.recipe import build_trainer
    from ..training.report import plot_curves

    run_dir = Path(run_dir)
    summary, history = _read_run(run_dir)
    cfg = load_config(run_dir / "config.toml")
    d = cfg["data"]
    data = load_data(d["name"], root=d["root"], limit=d["limit"], val_size=d["val_size"], seed=cfg["seed"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trainer({**cfg, "parallel": {**cfg["parallel"], "mode": "sync"}}, data=data, progress=False)
    trainer.eval_model.load_state_dict(ckpt.load_weights(run_dir / "model.safetensors"))
    epochs = int(summary.get("epochs", cfg["epochs"]))
    trainer.epoch = epochs                 # evaluated as at the run's end (e.g. flip TTA from an epoch on)
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

    gn = [r for r in history if "grad_norm" in r]
    if gn:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([r["epoch"] for r in gn], [r["grad_norm"] for r in gn], "o-", ms=3, label="mean per epoch")
        ax.plot([r["epoch"] for r in gn], [r["grad_norm_max"] for r in gn], "^--", ms=3, label="max per epoch")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("gradient L2 norm")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        pngs["grad_norm"] = savefig(fig, run_dir / "grad_norm.png")

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
        sections.append(("Learning curves", image(pngs["curves"], "curves")))
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
        sections.append(("Gradient-norm history", image(pngs["grad_norm"], "gradient norm") +
                         "<p>Global L2 norm of the gradient before clipping or other transforms.</p>"))
    sections.append(("Config", f"<pre>{esc((run_dir / 'config.toml').read_text())}</pre>"))
    title = f"traintricks run: {summary.get('dataset', '')} / {summary.get('model', '')} ({run_dir.name})"
    intro = f"Test accuracy recomputed from model.safetensors: <b>{100 * accuracy:.2f}%</b>."
    out = run_dir / "report.html"
    ckpt.atomic_write_text(out, page(title, sections, intro))
    return out
