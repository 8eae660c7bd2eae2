"""Overhead of traintricks' regularization layers: forward + backward time in training mode against the
plain layer each one wraps (or the native PyTorch layer computing the same thing), in alternating rounds.

| ours | against |
|---|---|
| Dropout(0.5), element / channel | nn.Dropout(0.5) / nn.Dropout2d(0.5) (native, same computation) |
| DropConnectLinear(p=0.5) | nn.Linear (the layer it wraps) |
| DropConnectConv2d(p=0.5) | nn.Conv2d |
| add_stochastic_depth(branch, 0.8), row / batch | the branch alone (conv-BN-ReLU-conv) |
| ShakeShake(branch, branch') | branch(x) + branch'(x) |
| ShakeDrop(branch, 0.5) | the branch alone |
| GaussianNoise(0.1) | nn.Dropout(0.1) (a native elementwise regularizer of the same cost class) |
| NoisyHardTanh | nn.Hardtanh |

    python benchmarks/regularization.py [--rounds 15] [--out benchmarks/results/regularization.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import copy  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from traintricks.nn import (DropConnectConv2d, DropConnectLinear, Dropout, GaussianNoise, NoisyHardTanh,  # noqa: E402
                            ShakeDrop, ShakeShake, add_stochastic_depth)


def branch(c: int = 64) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                         nn.Conv2d(c, c, 3, padding=1, bias=False))


class Sum(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return self.a(x) + self.b(x)


def cases():
    act = (128, 64, 16, 16)
    feat = (64, 64, 16, 16)
    lin_in = (256, 512)
    torch.manual_seed(0)
    b1, b2 = branch(), branch()
    lin = nn.Linear(512, 512)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    dcl = DropConnectLinear(512, 512, p=0.5)
    dcl.load_state_dict(lin.state_dict())
    dcc = DropConnectConv2d(64, 64, 3, padding=1, p=0.5)
    dcc.load_state_dict(conv.state_dict())
    return [
        ("dropout (element)", Dropout(0.5), nn.Dropout(0.5), act),
        ("dropout (channel)", Dropout(0.5, mode="channel"), nn.Dropout2d(0.5), act),
        ("dropconnect linear", dcl, lin, lin_in),
        ("dropconnect conv2d", dcc, conv, feat),
        ("stochastic depth (row)", add_stochastic_depth(copy.deepcopy(b1), 0.8), b1, feat),
        ("stochastic depth (batch)", add_stochastic_depth(copy.deepcopy(b1), 0.8, mode="batch"), b1, feat),
        ("shake-shake", ShakeShake(b1, b2), Sum(b1, b2), feat),
        ("shakedrop", ShakeDrop(b1, 0.5), b1, feat),
        ("gaussian noise", GaussianNoise(0.1), nn.Dropout(0.1), act),
        ("noisy hard-tanh", NoisyHardTanh(), nn.Hardtanh(), act),
    ]


def step_fn(module: nn.Module, x: torch.Tensor):
    params = [p for p in module.parameters()]

    def step():
        xi = x.detach().requires_grad_()
        (module(xi) + xi).sum().backward()   # as in a residual block (a dropped branch has no graph)
        for p in params:
            p.grad = None
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "regularization.json"))
    args = ap.parse_args()
    rows = []
    for name, ours, plain, shape in cases():
        x = torch.randn(shape)
        t = time_interleaved({"ours": step_fn(ours.train(), x), "plain": step_fn(plain.train(), x)},
                             rounds=args.rounds)
        row = {"layer": name, "against": type(plain).__name__, "shape": "x".join(map(str, shape)),
               "ours_ms": t["ours"] * 1e3, "plain_ms": t["plain"] * 1e3, "ratio": t["ours"] / t["plain"]}
        rows.append(row)
        print(f"{name:26s} {row['ours_ms']:8.3f} ms  vs {row['against']:12s} {row['plain_ms']:8.3f} ms  "
              f"ratio {row['ratio']:.3f}", flush=True)
    print()
    print(table(rows, ["layer", "against", "shape", "ours_ms", "plain_ms", "ratio"]))
    write_json(args.out, {"benchmark": "regularization", "machine": machine(), "rounds": args.rounds, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
