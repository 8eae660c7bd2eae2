"""SAM / ASAM step time: traintricks' ``SAM`` against ``pytorch_optimizer.SAM`` (the same algorithm, davda54's API),
both around ``torch.optim.SGD`` (momentum 0.9) on a small CNN, in alternating rounds. One step = the caller's
forward + backward at ``w`` and ``step(closure)`` (the closure: forward + backward at ``w + e``), the same loop for
both. pytorch_optimizer is a test extra, installed in its own venv (``pip install --no-deps pytorch_optimizer``
into a venv that sees the pinned CPU torch).

    python benchmarks/sam.py [--rounds 15] [--out benchmarks/results/sam.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from traintricks.optim.sam import SAM  # noqa: E402


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


def step_fn(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    def step():
        closure()
        opt.step(closure)
    return step


def main() -> None:
    import pytorch_optimizer as po
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sam.json"))
    args = ap.parse_args()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    rows = []
    for adaptive in (False, True):
        m1, m2 = net(), net()
        ours = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, adaptive=adaptive, eta=0.0, lr=0.05, momentum=0.9,
                   model=m1)
        ref = po.SAM(m2.parameters(), torch.optim.SGD, rho=0.05, adaptive=adaptive, lr=0.05, momentum=0.9)
        t = time_interleaved({"ours": step_fn(m1, ours, x, y), "ref": step_fn(m2, ref, x, y)}, rounds=args.rounds)
        row = {"optimizer": "ASAM" if adaptive else "SAM", "batch": "64x1x28x28", "ours_ms": t["ours"] * 1e3,
               "pytorch_optimizer_ms": t["ref"] * 1e3, "ratio": t["ours"] / t["ref"]}
        rows.append(row)
        print(f"{row['optimizer']:5s} ours {row['ours_ms']:.3f} ms  pytorch_optimizer {row['pytorch_optimizer_ms']:.3f} ms"
              f"  ratio {row['ratio']:.3f}", flush=True)
    print()
    print(table(rows, ["optimizer", "batch", "ours_ms", "pytorch_optimizer_ms", "ratio"]))
    write_json(args.out, {"benchmark": "sam", "machine": machine(), "rounds": args.rounds, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
