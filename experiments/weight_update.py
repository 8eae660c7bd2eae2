"""Two claims of the notes about the weight update, in seeded runs on a Fashion-MNIST subset.

1. **One-cycle reaches a target accuracy in fewer epochs than a constant rate** ("super-convergence",
   Smith & Topin 2017, arXiv:1708.07120). The default CNN and SGD + Nesterov on the first 10,000 training
   images, batch 256: one-cycle runs with budgets of 2, 4 and 6 epochs (the rate peaks at 0.15), against
   constant rates 0.02, 0.05 and 0.15 for 8 epochs. Reported: epochs until the test accuracy first reaches the
   target.
2. **Gradient clipping rescues a run that diverges without it** (Pascanu et al. 2013, arXiv:1211.5063).
   The CNN without normalization at a one-cycle peak rate of 0.5, with and without clipping the global
   gradient norm to 1, 3 epochs.

Prints tables, writes JSON and a plot.

    python experiments/weight_update.py [--target 0.87] [--out experiments/results/weight_update.json]
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

from traintricks.config import load_config  # noqa: E402
from traintricks.data import load_data  # noqa: E402
from traintricks.training import build_trainer  # noqa: E402
from traintricks.training.trainer import NonFiniteLossError  # noqa: E402

BASE = ["data.val_size=0", "callbacks=[]", "data.augment=[]", "batch_size=256", "precision=fp32",
        "model.pool_before_norm=false"]


def train(overrides: list[str], data) -> dict:
    cfg = load_config(overrides=BASE + overrides)
    history: list[dict] = []
    trainer = build_trainer(cfg, data=data, progress=False, callbacks=[lambda tr, rec: history.append(dict(rec))])
    try:
        trainer.fit()
        status = "ok"
    except NonFiniteLossError as e:
        status = f"diverged: {str(e).split(';')[0]}"
    return {"status": status, "history": [{k: h[k] for k in ("epoch", "train_loss", "test_accuracy") if k in h}
                                          for h in history]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--target", type=float, default=0.87)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "weight_update.json"))
    args = ap.parse_args()
    data = load_data("fashion_mnist", root=args.root, limit=args.train, val_size=0, seed=args.seed)
    seed = [f"seed={args.seed}"]
    results: dict = {"train_images": args.train, "target": args.target, "onecycle": {}, "constant": {}, "clipping": {}}

    print(f"1. epochs to {100 * args.target:.0f}% test accuracy\n\n| schedule | epochs run | final acc | epochs to target |\n|---|---:|---:|---:|")
    for budget in (2, 4, 6):
        r = train(seed + ["schedule.name=onecycle", "lr=0.15", f"epochs={budget}"], data)
        results["onecycle"][budget] = r
        final = r["history"][-1]["test_accuracy"]
        hit = budget if final >= args.target else None
        r["epochs_to_target"] = hit
        print(f"| one-cycle, budget {budget} | {budget} | {100 * final:.2f}% | {hit or 'not reached'} |", flush=True)
    for lr in (0.02, 0.05, 0.15):
        r = train(seed + ["schedule.name=constant", f"lr={lr}", "epochs=8"], data)
        results["constant"][lr] = r
        hit = next((h["epoch"] for h in r["history"] if h["test_accuracy"] >= args.target), None)
        r["epochs_to_target"] = hit
        print(f"| constant {lr} | 8 | {100 * r['history'][-1]['test_accuracy']:.2f}% | {hit or 'not reached'} |",
              flush=True)

    print("\n2. no normalization, one-cycle peak 0.5, 3 epochs\n\n| clipping | status | final train loss | final acc |\n|---|---|---:|---:|")
    for name, extra in (("none", []), ("global norm 1.0", ['grad_transforms=[{name = "clip_norm", max_norm = 1.0}]'])):
        r = train(seed + ["model.norm=none", "lr=0.5", "epochs=3"] + extra, data)
        results["clipping"][name] = r
        last = r["history"][-1] if r["history"] else {}
        print(f"| {name} | {r['status']} | {last.get('train_loss', float('nan')):.3f} | "
              f"{100 * last.get('test_accuracy', float('nan')):.2f}% |", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for budget, r in results["onecycle"].items():
        ax1.plot([h["epoch"] for h in r["history"]], [100 * h["test_accuracy"] for h in r["history"]], "o-",
                 label=f"one-cycle, {budget} epochs")
    for lr, r in results["constant"].items():
        ax1.plot([h["epoch"] for h in r["history"]], [100 * h["test_accuracy"] for h in r["history"]], "--",
                 label=f"constant {lr}")
    ax1.axhline(100 * args.target, color="k", lw=0.8)
    ax1.set(xlabel="epoch", ylabel="test accuracy (%)", title="one-cycle against constant rates", ylim=(70, 93))
    ax1.legend(fontsize=8)
    for name, r in results["clipping"].items():
        ep = [h["epoch"] for h in r["history"]]
        ax2.plot(ep, [100 * h["test_accuracy"] for h in r["history"]], "o-", label=f"clipping: {name}")
        if not r["history"]:
            ax2.text(0.05, 0.1 + 0.1 * len(ax2.texts), f"clipping {name}: {r['status']}", transform=ax2.transAxes,
                     fontsize=8, color="crimson")
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="no normalization, peak lr 0.5")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
