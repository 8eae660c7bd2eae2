"""Two claims of the notes about normalization, checked in small seeded runs on real data.

1. **Batch norm tolerates a larger learning rate** than no normalization (Ioffe & Szegedy 2015, sec. 3.3;
   Santurkar et al. 2018): the same CNN, SGD with Nesterov momentum 0.9 and the recipe's one-cycle
   schedule peaking at the given rate, with and without BN, over a range of peak rates; final test
   accuracy, or "diverged" when the loss became NaN/Inf.
2. **Batch norm degrades at batch sizes 2-4, group norm and batch renorm hold up** (Wu & He 2018, fig. 1;
   Ioffe 2017, sec. 4.2): BN, GN and batch renorm at batch 2, 4 and 64, the rate scaled linearly with
   the batch, the same number of epochs (so the same examples seen) -- in the CNN (part 2), whose batch
   norms pool statistics over batch *and* positions, and in an MLP (part 3), where BatchNorm1d has only
   the batch's N values per feature.

Data: the first ``--train`` Fashion-MNIST training images, the full 10k test set. Everything else is
the default recipe's machinery (``traintricks.training.build_trainer``). Prints tables, writes JSON.

    python experiments/norms.py [--train 6000] [--seeds 0 1] [--parts 1,2,3] [--out experiments/results/norms.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from traintricks.config import load_config  # noqa: E402
from traintricks.data import load_data  # noqa: E402
from traintricks.training import build_trainer  # noqa: E402
from traintricks.training.trainer import NonFiniteLossError  # noqa: E402

COMMON = ["schedule.name=onecycle", "data.augment_from_epoch=0", "model.name=cnn", "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]", "data.augment=[]",
          "model.pool_before_norm=false",
          "data.val_size=0", "callbacks=[]", "precision=fp32",
          "optim.name=sgd", "optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=0.0005"]


def train(overrides: list[str], data) -> dict:
    cfg = load_config(overrides=COMMON + overrides)
    trainer = build_trainer(cfg, data=data, progress=False)
    t = time.perf_counter()
    try:
        summary = trainer.fit()
        acc = summary["test_accuracy"]
    except NonFiniteLossError:
        acc = None
    return {"test_accuracy": acc, "seconds": round(time.perf_counter() - t, 1)}


def mean_acc(runs: list[dict]) -> float | None:
    accs = [r["test_accuracy"] for r in runs]
    return None if any(a is None for a in accs) else statistics.mean(accs)


def fmt(a: float | None) -> str:
    return "diverged" if a is None else f"{100 * a:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=6000, help="training images used")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--root", default="", help="Fashion-MNIST directory (default: the usual places)")
    ap.add_argument("--parts", default="1,2,3", help="which experiments to run (results merge into --out)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "norms.json"))
    args = ap.parse_args()
    parts = {int(p) for p in args.parts.split(",")}
    data = {s: load_data("fashion_mnist", root=args.root, limit=args.train, val_size=0, seed=s) for s in args.seeds}
    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if out.is_file() else {}
    results.update({"train_images": args.train, "seeds": args.seeds})
    if 1 in parts:
        results["learning_rate"] = part1(args, data)
    for part, model in ((2, ["model.name=cnn"]), (3, ["model.name=mlp", "model.hidden=[256, 256]"])):
        if part in parts:
            results["batch_size" if part == 2 else "batch_size_mlp"] = small_batches(args, data, part, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


def part1(args, data) -> list:
    rows = []

    print("1. final test accuracy after 3 epochs, batch 128, one-cycle schedule peaking at lr (mean over seeds)\n")
    print("| lr | batchnorm | none |\n|---:|---:|---:|")
    for lr in (0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        row = {"lr": lr}
        for norm in ("batchnorm", "none"):
            runs = [train([f"model.norm={norm}", f"lr={lr}", "batch_size=128", "epochs=3", f"seed={s}"], data[s])
                    for s in args.seeds]
            row[norm] = {"runs": runs, "mean": mean_acc(runs)}
        rows.append(row)
        print(f"| {lr:g} | {fmt(row['batchnorm']['mean'])} | {fmt(row['none']['mean'])} |", flush=True)
    return rows


def small_batches(args, data, part: int, model: list[str]) -> list:
    rows = []
    what = "CNN" if part == 2 else "MLP 784-256-256-10"
    print(f"\n{part}. {what}: final test accuracy after 2 epochs, lr = 0.1 * batch / 64 (mean over seeds)\n")
    print("| batch | batchnorm | groupnorm | batchrenorm |\n|---:|---:|---:|---:|")
    for bs in (2, 4, 64):
        row = {"batch_size": bs}
        for norm in ("batchnorm", "groupnorm", "batchrenorm"):
            runs = [train(model + [f"model.norm={norm}", f"lr={0.1 * bs / 64:.6g}", f"batch_size={bs}", "epochs=2",
                                   f"seed={s}"], data[s]) for s in args.seeds]
            row[norm] = {"runs": runs, "mean": mean_acc(runs)}
        rows.append(row)
        print(f"| {bs} | " + " | ".join(fmt(row[n]["mean"]) for n in ("batchnorm", "groupnorm", "batchrenorm"))
              + " |", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
