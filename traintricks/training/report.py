"""Run reports: ``curves.png`` (loss, the task's primary metric -- accuracy for classification -- and learning rate
per epoch) and ``report.md``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import atomic_write_text


def _primary_metric(summary: dict[str, Any] | None, history: Sequence[dict[str, Any]]) -> str:
    """The run's task's primary metric: from ``summary["task"]``, else the first task whose ``val_``/``test_``
    metric the history records (``accuracy`` when none)."""
    from ..evaluation.tasks import TASKS, get_task
    if summary and summary.get("task"):
        return get_task(summary["task"]).primary
    keys = set().union(*history) if history else set()
    for name in ["classification", *TASKS.names()]:
        m = get_task(name).primary
        if any(f"{split}_{m}" in keys for split in ("train", "val", "test")):
            return m
    return "accuracy"


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "",
                metric: str | None = None) -> Path:
    """Plot train/val/test loss, ``metric`` (default: the task's primary metric found in the history, e.g.
    accuracy) and the learning rate against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, m in zip(axes[:2], ("loss", metric or _primary_metric(None, history))):
        for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
            key = f"{split}_{m}"
            if history and key in history[0]:
                ax.plot(ep, [r[key] for r in history], style, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(ep, [r["lr"] for r in history], marker="o", ms=3)
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate (end of epoch)")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(out_dir: str | os.PathLike, summary: dict[str, Any], history: Sequence[dict[str, Any]],
                 config_toml: str) -> Path:
    """A Markdown report of a finished run: headline numbers, per-epoch table, curves, config."""
    out = Path(out_dir)
    s = summary
    lines = [f"# traintricks run: {s.get('dataset', '')} / {s.get('model', '')}", ""]
    m = _primary_metric(s, history)
    if f"test_{m}" in s:
        name = "accuracy" if m == "accuracy" else m
        lines.append(f"- **test {name}: {s[f'test_{m}']:.4f}** (test loss {s['test_loss']:.4f})")
    if s.get("tta_views"):
        which = {2: "'tta_flip'", 5: "'tta_shift'", 10: "'tta_flip', 'tta_shift'"}.get(s["tta_views"], "")
        lines.append(f"- test metrics: the mean of {s['tta_views']} test-time views of each image (callbacks {which})")
    if "test_robust_accuracy" in s:
        lines.append(f"- test robust accuracy (PGD, callbacks 'adversarial'): {s['test_robust_accuracy']:.4f}")
    if s.get("task", "classification") != "classification":
        from ..evaluation.tasks import get_task
        others = [f"{k} {s[f'test_{k}']:.4f}" for k in get_task(s["task"]).metrics if k != m and f"test_{k}" in s]
        lines.append(f"- task: {s['task']}" + (f" (test {', '.join(others)})" if others else ""))
    averaged = (f"stochastic weight averaging of {s['swa_averaged']} models" if s.get("swa_averaged") else
                f"the average of the last {s['checkpoint_average_k']} epochs' weights"
                if s.get("checkpoint_average_k") else None)
    if averaged:               # the weight averages (evaluation/averaging.py) report the weights they replaced
        last = f" (the last weights: test {m} {s[f'last_weights_test_{m}']:.4f})" \
            if f"last_weights_test_{m}" in s else ""
        lines.append(f"- evaluated and saved: {averaged}{last}")
    lines += [f"- epochs: {s['epochs']} (best epoch {s['best_epoch']}, stopped early: {s['stopped_early']})",
              f"- training time: {s['train_seconds']:.1f} s of {s['wall_seconds']:.1f} s wall"
              f" ({s['device']}, {s['precision']}, {s.get('threads', '?')} threads)",
              f"- parameters: {s.get('parameters', '?'):,}" if isinstance(s.get('parameters'), int) else "",
              "", "![curves](curves.png)", "",
              "| epoch | train loss | train acc | val loss | val acc | test acc | lr | s |" if m == "accuracy" else
              f"| epoch | train loss | train {m} | val loss | val {m} | test {m} | lr | s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sized = any("image_size" in r for r in history)      # progressive resizing: the size each epoch trained on
    if sized:
        lines[-2:] = [lines[-2][:-1] + "| image size |", lines[-1] + "---:|"]
    f = lambda r, k, fmt: format(r[k], fmt) if k in r else ""  # noqa: E731
    for r in history:
        lines.append(f"| {r['epoch']} | {f(r, 'train_loss', '.4f')} | {f(r, f'train_{m}', '.4f')} | "
                     f"{f(r, 'val_loss', '.4f')} | {f(r, f'val_{m}', '.4f')} | {f(r, f'test_{m}', '.4f')} | "
                     f"{f(r, 'lr', '.3g')} | {f(r, 'epoch_seconds', '.1f')} |" + (f" {f(r, 'image_size', 'd')} |"
                                                                                   if sized else ""))
    lines += ["", "## Config", "", "```toml", config_toml.rstrip(), "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(line for line in lines if line is not None))
    return path
