"""Time to 90/92/93% Fashion-MNIST test accuracy: the default recipe against a plain PyTorch baseline.

The default recipe is ``traintricks train`` with no config (small CNN with batch norm, pooling before the norm,
batch 256, SGD with Nesterov momentum, two one-cycles -- 5 epochs on plain images, then 20 with crop+flip
augmentation and flip test-time augmentation --, label smoothing, bf16 autocast where the CPU supports it,
channels-last). The baseline is what a typical
example script does: the PyTorch MNIST example's CNN (two 3x3 convs, max pool, dropout, two linear
layers), Adam at 1e-3, batch 64, no schedule, no tricks, fp32, on the same tensors.

Both are timed by cumulative *training* seconds (evaluation excluded) at the end of the first epoch
whose test accuracy reaches each target. Prints a table and writes JSON.

The recipe's first cycle on its own is ``configs/fast.toml`` (5 epochs, no augmentation); it runs too
unless ``--no-fast``.

    python benchmarks/train_fmnist.py [--baseline-epochs 15] [--out benchmarks/results/train_fmnist.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import torch  # noqa: E402
from torch import nn  # noqa: E402

from traintricks.config import load_config
from traintricks.data import TensorLoader, load_data
from traintricks.training import build_trainer

TARGETS = (0.90, 0.92, 0.93)


class BaselineNet(nn.Module):
    """The PyTorch MNIST example's network (examples/mnist/main.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))

    def forward(self, x):
        return self.body(x)


def run_baseline(data, epochs: int, budget_s: float, seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    model = BaselineNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = TensorLoader(data.train_x, data.train_y, 64, shuffle=True, seed=seed)
    test = TensorLoader(data.test_x, data.test_y, 1000)
    history, elapsed = [], 0.0
    for epoch in range(epochs):
        model.train()
        train.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        elapsed += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
        history.append({"epoch": epoch + 1, "train_seconds": elapsed, "test_accuracy": correct / len(data.test_y)})
        print(f"  baseline epoch {epoch + 1}: {elapsed:6.1f}s  test {history[-1]['test_accuracy']:.4f}", flush=True)
        if elapsed > budget_s:
            break
    return history


def time_to(history: list[dict]) -> dict[str, float | None]:
    out = {}
    for t in TARGETS:
        hit = next((r for r in history if r["test_accuracy"] >= t), None)
        out[f"{t:.2f}"] = round(hit["train_seconds"], 1) if hit else None
    return out


def run_recipe(name: str, config: str | None, seed: int) -> dict:
    cfg = load_config(config, [f"seed={seed}"])
    print(f"{name} ({config or 'defaults'}):", flush=True)
    trainer = build_trainer(cfg, progress=False, callbacks=[lambda t, r: print(
        f"  {name} epoch {r['epoch']}: {r['train_seconds']:6.1f}s  test {r['test_accuracy']:.4f}", flush=True)])
    summary = trainer.fit()
    hist = [{k: r[k] for k in ("epoch", "train_seconds", "test_accuracy")} for r in trainer.history]
    return {"config": config or "defaults", "final_test_accuracy": summary["test_accuracy"], "epochs": summary["epochs"],
            "train_seconds": round(summary["train_seconds"], 1), "precision": summary["precision"],
            "time_to": time_to(hist), "history": hist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-epochs", type=int, default=15)
    ap.add_argument("--baseline-budget", type=float, default=600.0, help="stop the baseline after this many s")
    ap.add_argument("--no-fast", action="store_true", help="skip the 60-second configs/fast.toml run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/train_fmnist.json")
    args = ap.parse_args()

    result = {"command": "python " + " ".join(sys.argv),
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__}}
    result["recipe"] = run_recipe("recipe", None, args.seed)
    if not args.no_fast:
        fast = Path(__file__).resolve().parent.parent / "configs" / "fast.toml"
        result["recipe_60s"] = run_recipe("recipe_60s", str(fast), args.seed)
    print("baseline:", flush=True)
    data = load_data("fashion_mnist", val_size=load_config()["data"]["val_size"], seed=args.seed)
    base = run_baseline(data, args.baseline_epochs, args.baseline_budget, args.seed)
    result["baseline"] = {"final_test_accuracy": base[-1]["test_accuracy"], "epochs": len(base),
                          "train_seconds": round(base[-1]["train_seconds"], 1), "time_to": time_to(base),
                          "history": base}
    print()
    print(f"{'':12s} {'final acc':>9s} {'train s':>8s} " + " ".join(f"{'to ' + f'{t:.0%}':>8s}" for t in TARGETS))
    for name in ("recipe", "recipe_60s", "baseline"):
        if name not in result:
            continue
        r = result[name]
        cells = " ".join(f"{(str(v) + 's') if v is not None else 'never':>8s}" for v in r["time_to"].values())
        print(f"{name:12s} {r['final_test_accuracy']:9.4f} {r['train_seconds']:8.1f} {cells}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
