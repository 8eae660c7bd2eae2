"""Do label smoothing and the confidence penalty make the network better calibrated?

The default recipe's CNN (24-48-96, batch norm) trains on Fashion-MNIST once with plain cross-entropy,
once with label smoothing (Müller et al. 2019, arXiv:1906.02629) and once with the confidence penalty
(Pereyra et al. 2017, arXiv:1701.06548), in two regimes:

* ``overfit``: the first 3,000 training images, no augmentation, no weight decay, 40 epochs -- the network
  fits its training set and becomes over-confident, the situation the papers address;
* ``recipe``: the first 10,000 images with the recipe's augmentation and weight decay, 10 epochs.

On the
full test set we measure accuracy and the expected calibration error (ECE, 15 equal-width bins of the
top-class confidence; Guo et al. 2017), and draw reliability diagrams (accuracy against confidence per bin;
a calibrated model lies on the diagonal). Test-time flip augmentation is off, so the probabilities are the
network's own.

    python experiments/calibration.py [--regimes overfit,recipe] [--out experiments/results/calibration.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from traintricks.config import load_config  # noqa: E402
from traintricks.data import load_data  # noqa: E402
from traintricks.evaluation import expected_calibration_error, reliability  # noqa: E402
from traintricks.training import build_trainer  # noqa: E402

VARIANTS = {
    "cross-entropy": ["loss.name=cross_entropy", "loss.label_smoothing=0.0"],
    "label smoothing 0.03": ["loss.name=cross_entropy", "loss.label_smoothing=0.03"],
    "label smoothing 0.1": ["loss.name=cross_entropy", "loss.label_smoothing=0.1"],
    "confidence penalty 0.1": ["loss.name=confidence_penalty", "loss.beta=0.1"],
}
REGIMES = {  # (training images, epochs, config)
    "overfit": (3000, 40, ["data.augment=[]", "optim.weight_decay=0.0"]),
    "recipe": (10000, 10, []),
}


@torch.no_grad()
def test_probs(trainer, data) -> torch.Tensor:
    model = trainer.model.eval()
    out = []
    for i in range(0, len(data.test_x), 1000):
        x = data.test_x[i:i + 1000]
        if trainer.memory_format is not None:
            x = x.contiguous(memory_format=trainer.memory_format)
        with trainer.autocast():
            out.append(torch.softmax(model(x).float(), dim=1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "calibration.json"))
    args = ap.parse_args()
    regimes = args.regimes.split(",")
    results = {"seed": args.seed, "regimes": {}}
    fig, axes = plt.subplots(len(regimes), len(VARIANTS), figsize=(4 * len(VARIANTS), 4 * len(regimes)), squeeze=False)
    print("| regime | loss | test accuracy | ECE (15 bins) | mean confidence |\n|---|---|---:|---:|---:|")
    for row, regime in zip(axes, regimes):
        n_train, epochs, extra = REGIMES[regime]
        data = load_data("fashion_mnist", root=args.root, limit=n_train, val_size=0, seed=args.seed)
        runs = results["regimes"].setdefault(regime, {"train_images": n_train, "epochs": epochs, "runs": {}})["runs"]
        for ax, (name, opts) in zip(row, VARIANTS.items()):
            cfg = load_config(overrides=opts + extra + ["schedule.name=onecycle", "data.augment_from_epoch=0",
                                                        "callbacks=[]", "data.val_size=0", f"epochs={epochs}",
                                                        f"seed={args.seed}", "batch_size=256", "lr=0.2",
                                                        "test_every_epoch=false", "model.pool_before_norm=false"])
            trainer = build_trainer(cfg, data=data, progress=False)
            trainer.fit()
            probs = test_probs(trainer, data)
            ece = expected_calibration_error(probs, data.test_y)
            rel = reliability(probs, data.test_y)
            acc = float((probs.argmax(1) == data.test_y).double().mean())
            conf = float(probs.max(1).values.double().mean())
            runs[name] = {"test_accuracy": acc, "ece": ece, "mean_confidence": conf,
                          "bins": {k: v.tolist() for k, v in rel.items()}}
            print(f"| {regime} | {name} | {100 * acc:.2f}% | {100 * ece:.2f}% | {100 * conf:.1f}% |", flush=True)
            edges = torch.linspace(0, 1, 16)
            centres = (edges[:-1] + edges[1:]) / 2
            used = rel["count"] > 0
            ax.bar(centres[used], rel["accuracy"][used], width=1 / 15, edgecolor="black", alpha=0.7, label="accuracy")
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
            ax.plot(rel["confidence"][used], rel["accuracy"][used], "o", color="crimson", ms=3,
                    label="(confidence, accuracy)")
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                   title=f"{regime}: {name}\nECE {100 * ece:.2f}%, accuracy {100 * acc:.1f}%")
            ax.legend(fontsize=7, loc="upper left")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
