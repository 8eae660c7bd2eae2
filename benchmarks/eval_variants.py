"""One training run of a recipe, with evaluation variants measured alongside on the same weights (issue 19's
ablations of evaluation-side tricks): weight EMAs, test-time augmentation views, and a snapshot ensemble.

Training is the recipe's own (``traintricks`` config plus ``--set`` overrides); the variants only evaluate, so one
run compares them on one trajectory. Per epoch (from ``--from-epoch``) and at the end, on the test set:

- ``live_plain``, ``live_flip``: the trained weights, one view / the image and its mirror;
- ``ema<d>_flip``: a weight EMA of decay ``d`` (``--ema``, any number; BN statistics recomputed over 20 batches);
- at the end also ``<model>_shift4`` (the image, 4 one-pixel shifts and all mirrors, zero fill: 10 views, what
  ``tta_shift`` after ``tta_flip`` evaluates), ``<model>_shift8`` (8 shifts incl. diagonals: 18 views, zero fill)
  and ``<model>_shift4_replicate`` (edge-replicating fill);
- ``ens<e>_<views>_<how>``: the mean of the final model and the weights after epoch ``e`` (``--snapshot``;
  ``how``: logits, probabilities, or the final model weighted 2:1).

Training CPU seconds are recorded as in ``train_fmnist.py`` (evaluation excluded). Writes JSON (``--out``).

    OMP_NUM_THREADS=1 python benchmarks/eval_variants.py --ema 0.995 --snapshot 5 --set threads=1 --set epochs=22 \\
        --set 'schedule.cycle_epochs=[5,17]' --out /tmp/variants.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_fmnist import TrainCPU  # noqa: E402

from traintricks.callback import Callback  # noqa: E402
from traintricks.config import load_config  # noqa: E402
from traintricks.evaluation.ema import ModelEMA  # noqa: E402
from traintricks.training import build_trainer  # noqa: E402

SHIFTS4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
SHIFTS8 = SHIFTS4 + ((-1, -1), (-1, 1), (1, -1), (1, 1))


def views(x: torch.Tensor, kind: str) -> list[torch.Tensor]:
    if kind == "plain":
        return [x]
    out = [x, x.flip(-1)]
    if kind == "flip":
        return out
    shifts = SHIFTS8 if kind == "shift8" else SHIFTS4
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate" if kind.endswith("replicate") else "constant")
    h, w = x.shape[-2:]
    for dy, dx in shifts:
        v = padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        out += [v, v.flip(-1)]
    return out


@torch.no_grad()
def accuracy(trainer, models: list[torch.nn.Module], kind: str, how: str = "logits") -> float:
    for m in models:
        m.eval()
    correct = n = 0
    for x, y in trainer.test_loader:
        x, y = trainer.to_device(x, y)
        total = 0
        for i, m in enumerate(models):
            with trainer.autocast():
                vs = views(x, kind)
                s = sum(m(v).float() for v in vs) / len(vs)
            s = s.softmax(1) if how == "probs" else 2 * s if how == "weighted" and i == 0 else s
            total = total + s
        correct += (total.argmax(1) == y).sum().item()
        n += len(y)
    trainer.model.train()
    return correct / n


class Variants(Callback):
    def __init__(self, decays: list[float], from_epoch: int, snapshots: list[int]) -> None:
        self.decays, self.from_epoch, self.snapshot_epochs = decays, from_epoch, snapshots
        self.emas: dict[float, ModelEMA] = {}
        self.snapshots: dict[int, torch.nn.Module] = {}

    def setup(self, trainer) -> None:
        for d in self.decays:
            e = ModelEMA(trainer.model, d, bn="recompute", bn_batches=20)
            e.module.to(trainer.device)
            if trainer.memory_format is not None:
                e.module.to(memory_format=trainer.memory_format)
            self.emas[d] = e

    def on_after_optimizer_step(self, trainer) -> None:
        for e in self.emas.values():
            e.update(trainer.model)

    def on_train_epoch_end(self, trainer, record) -> None:
        ep, last = record["epoch"], record["epoch"] == trainer.epochs
        if ep in self.snapshot_epochs:
            self.snapshots[ep] = copy.deepcopy(trainer.model).eval()
        if ep < self.from_epoch and not last:
            return
        for e in self.emas.values():
            e.recompute_bn(trainer.inputs(trainer.train_loader))
        models = {"live": trainer.model, **{f"ema{d}": e.module for d, e in self.emas.items()}}
        record["live_plain"] = accuracy(trainer, [trainer.model], "plain")
        for name, m in models.items():
            record[f"{name}_flip"] = accuracy(trainer, [m], "flip")
            if last:
                for kind in ("shift4", "shift8", "shift4_replicate"):
                    record[f"{name}_{kind}"] = accuracy(trainer, [m], kind)
        if last:
            for ep_s, m in self.snapshots.items():
                for kind in ("flip", "shift8"):
                    for how in ("logits", "probs", "weighted"):
                        record[f"ens{ep_s}_{kind}_{how}"] = accuracy(trainer, [trainer.model, m], kind, how)
        print(ep, {k: v for k, v in record.items() if k.startswith(("live", "ema", "ens"))}, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="a config file (default: the default recipe)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--ema", action="append", type=float, default=[], metavar="DECAY")
    ap.add_argument("--snapshot", action="append", type=int, default=[], metavar="EPOCH")
    ap.add_argument("--from-epoch", type=int, default=1, help="first epoch evaluated per epoch (the last always is)")
    ap.add_argument("--out", default="benchmarks/results/eval_variants.json")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    trainer = build_trainer(cfg, progress=False, callbacks=[
        TrainCPU(), Variants(args.ema, args.from_epoch, args.snapshot),
        lambda t, r: print(f"epoch {r['epoch']}: cpu {r['train_cpu_seconds']:.1f} s, test {r['test_accuracy']:.4f}",
                           flush=True)])
    summary = trainer.fit()
    keep = ("epoch", "lr", "train_cpu_seconds", "test_accuracy")
    hist = [{k: v for k, v in r.items() if k in keep or k.startswith(("live", "ema", "ens"))} for r in trainer.history]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config or "defaults", "overrides": args.set,
                                         "precision": summary["precision"], "history": hist}, indent=1) + "\n")
    print(f"final test accuracy (the recipe's own evaluation): {summary['test_accuracy']:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
