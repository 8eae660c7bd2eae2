"""Run reports: ``curves.png`` (loss, accuracy and learning rate per epoch) and ``report.md``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .checkpoint import atomic_write_text


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Plot train/val/test loss, accuracy and the learning rate against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(ep, [r[key] for r in history], style, marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
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
    if "test_accuracy" in s:
        lines.append(f"- **test accuracy: {s['test_accuracy']:.4f}** (test loss {s['test_loss']:.4f})")
    lines += [f"- epochs: {s['epochs']} (best epoch {s['best_epoch']}, stopped early: {s['stopped_early']})",
              f"- training time: {s['train_seconds']:.1f} s of {s['wall_seconds']:.1f} s wall"
              f" ({s['device']}, {s['precision']}, {s.get('threads', '?')} threads)",
              f"- parameters: {s.get('parameters', '?'):,}" if isinstance(s.get('parameters'), int) else "",
              "", "![curves](curves.png)", "", "| epoch | train loss | train acc | val loss | val acc | test acc | lr | s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda r, k, fmt: format(r[k], fmt) if k in r else ""  # noqa: E731
    for r in history:
        lines.append(f"| {r['epoch']} | {f(r, 'train_loss', '.4f')} | {f(r, 'train_accuracy', '.4f')} | "
                     f"{f(r, 'val_loss', '.4f')} | {f(r, 'val_accuracy', '.4f')} | {f(r, 'test_accuracy', '.4f')} | "
                     f"{f(r, 'lr', '.3g')} | {f(r, 'epoch_seconds', '.1f')} |")
    lines += ["", "## Config", "", "```toml", config_toml.rstrip(), "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(line for line in lines if line is not None))
    return path
