"""Do the regularizers narrow the generalization gap? A seeded experiment on a small Fashion-MNIST subset.

A pre-activation ResNet (basic blocks, 16-32-64 wide) trains on the first ``--train`` training images
(default 2,000: small enough to overfit) for ``--epochs`` epochs, with no augmentation, once without
regularization and once with each of: dropout on the head input, stochastic depth, ShakeDrop,
Shake-Shake, mixup and cutout. After every epoch the model is evaluated (eval mode) on those
training images and on the full 10k test set; the gap is train minus test accuracy.

Prints a table of the final gap and test accuracy, writes JSON and a plot of the gap per epoch.

    python experiments/regularization.py [--train 2000] [--epochs 15] [--out experiments/results/regularization.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from traintricks.config import load_config  # noqa: E402
from traintricks.data import TensorLoader, load_data  # noqa: E402
from traintricks.training import build_trainer  # noqa: E402

BASE = ["schedule.name=onecycle", "data.augment_from_epoch=0", "model.name=preact_resnet", "model.bottleneck=false",
        "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]",
        "model.stem_width=16", "data.augment=[]", "data.val_size=0", "callbacks=[]", "batch_size=128",
        "lr=0.2", "optim.weight_decay=0.0"]
VARIANTS = {
    "none": [],
    "dropout": ['model.regularization=[{name = "dropout", p = 0.5}]'],
    "stochastic_depth": ['model.regularization=[{name = "stochastic_depth", survival = 0.5}]'],
    "shakedrop": ['model.regularization=[{name = "shakedrop", survival = 0.5}]'],
    "shake_shake": ['model.regularization=["shake_shake"]'],
    "mixup": ['data.augment=[{name = "mixup", alpha = 0.4}]'],
    "cutout": ['data.augment=[{name = "cutout", size = 10}]'],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--root", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "regularization.json"))
    args = ap.parse_args()
    data = load_data("fashion_mnist", root=args.root, limit=args.train, val_size=0, seed=args.seed)
    train_eval = TensorLoader(data.train_x, data.train_y, 1000)
    results = {"train_images": args.train, "epochs": args.epochs, "seed": args.seed, "runs": {}}
    print(f"| regularizer | train acc | test acc | gap (train - test) | seconds |\n|---|---:|---:|---:|---:|")
    for name in args.variants.split(","):
        cfg = load_config(overrides=BASE + VARIANTS[name] + [f"epochs={args.epochs}", f"seed={args.seed}"])
        curve = []
        trainer = build_trainer(cfg, data=data, progress=False, callbacks=[
            lambda tr, rec: curve.append({"epoch": rec["epoch"], "train": tr.evaluate(train_eval)["accuracy"],
                                          "test": rec["test_accuracy"]})])
        t = time.perf_counter()
        trainer.fit()
        last = curve[-1]
        results["runs"][name] = {"curve": curve, "seconds": round(time.perf_counter() - t, 1)}
        print(f"| {name} | {100 * last['train']:.1f}% | {100 * last['test']:.1f}% | "
              f"{100 * (last['train'] - last['test']):.1f} pp | {results['runs'][name]['seconds']} |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in results["runs"].items():
        ep = [c["epoch"] for c in run["curve"]]
        ax1.plot(ep, [100 * (c["train"] - c["test"]) for c in run["curve"]], label=name,
                 lw=2.5 if name == "none" else 1.2, color="black" if name == "none" else None)
        ax2.plot(ep, [100 * c["test"] for c in run["curve"]], label=name,
                 lw=2.5 if name == "none" else 1.2, color="black" if name == "none" else None)
    ax1.set(xlabel="epoch", ylabel="train - test accuracy (pp)", title="generalization gap")
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"test accuracy ({args.train} training images)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3), ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
