"""Forward + backward time of traintricks' normalization layers against PyTorch's native modules.

For each layer, shape and memory format, one training step of the layer alone (forward, then backward
of a fixed upstream gradient) is timed for ours and the native module computing the same thing, in
alternating rounds; the table gives medians and the ratio ours / native (< 1: ours is faster).

| ours | native reference |
|---|---|
| BatchNorm2d | nn.BatchNorm2d |
| BatchRenorm2d (r/d clipping active) | nn.BatchNorm2d (goal: <= 1.3x) |
| GroupNorm(8, C) | nn.GroupNorm(8, C) |
| InstanceNorm2d(C, affine=True) | nn.InstanceNorm2d(C, affine=True) |
| GroupLayerNorm(C) (the registry's layernorm) | nn.GroupNorm(1, C) (the same computation) |
| BatchNormAct2d(C, relu / gelu) | nn.Sequential(nn.BatchNorm2d(C), nn.ReLU(inplace=True) / nn.GELU()) |

``--reference`` adds the from-the-math reference implementations (``impl="reference"``).

    python benchmarks/norms.py [--rounds 15] [--quick] [--out benchmarks/results/norms.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from traintricks.nn import (BatchNorm2d, BatchNormAct2d, BatchRenorm2d, GroupLayerNorm, GroupNorm,  # noqa: E402
                            InstanceNorm2d)

SHAPES = [(128, 64, 32, 32), (32, 256, 16, 16), (256, 16, 8, 8)]


def _brn(c, impl="fast"):
    m = BatchRenorm2d(c, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0, impl=impl)
    with torch.no_grad():   # running estimates away from the batch's, so r and d are non-trivial
        m.running_mean.fill_(0.3)
        m.running_var.fill_(2.0)
    return m


LAYERS = {
    "batchnorm": (lambda c, impl="fast": BatchNorm2d(c, impl=impl), lambda c: nn.BatchNorm2d(c)),
    "batchrenorm": (_brn, lambda c: nn.BatchNorm2d(c)),
    "groupnorm": (lambda c, impl="fast": GroupNorm(8, c, impl=impl), lambda c: nn.GroupNorm(8, c)),
    "instancenorm": (lambda c, impl="fast": InstanceNorm2d(c, affine=True, impl=impl),
                     lambda c: nn.InstanceNorm2d(c, affine=True)),
    "layernorm": (lambda c, impl="fast": GroupLayerNorm(c, impl=impl), lambda c: nn.GroupNorm(1, c)),
    "batchnorm+relu": (lambda c, impl="fast": BatchNormAct2d(c, activation="relu", impl=impl),
                       lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))),
    "batchnorm+gelu": (lambda c, impl="fast": BatchNormAct2d(c, activation="gelu", impl=impl),
                       lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.GELU())),
}


def step_fn(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def step():
        xi = x.detach().requires_grad_()
        module(xi).backward(grad)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="one shape, fewer rounds (a smoke run)")
    ap.add_argument("--reference", action="store_true", help="also time the from-the-math reference implementations")
    ap.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset of " + ",".join(LAYERS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "norms.json"))
    args = ap.parse_args()
    shapes = SHAPES[2:] if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    rows = []
    for name in args.layers.split(","):
        ours_f, native_f = LAYERS[name]
        for shape in shapes:
            for fmt in ("nchw", "channels_last"):
                torch.manual_seed(0)
                x = torch.randn(shape) * 2 + 0.5
                if fmt == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                grad = torch.randn_like(x)
                fns = {"ours": step_fn(ours_f(shape[1]).train(), x, grad),
                       "native": step_fn(native_f(shape[1]).train(), x, grad)}
                if args.reference:
                    fns["reference"] = step_fn(ours_f(shape[1], impl="reference").train(), x, grad)
                t = time_interleaved(fns, rounds=rounds)
                row = {"layer": name, "shape": "x".join(map(str, shape)), "format": fmt,
                       "ours_ms": t["ours"] * 1e3, "native_ms": t["native"] * 1e3,
                       "ratio": t["ours"] / t["native"]}
                if args.reference:
                    row["reference_ms"] = t["reference"] * 1e3
                    row["reference_ratio"] = t["reference"] / t["native"]
                rows.append(row)
                print(f"{name:15s} {row['shape']:12s} {fmt:13s} ours {row['ours_ms']:8.3f} ms  "
                      f"native {row['native_ms']:8.3f} ms  ratio {row['ratio']:.3f}", flush=True)
    cols = ["layer", "shape", "format", "ours_ms", "native_ms", "ratio"]
    if args.reference:
        cols += ["reference_ms", "reference_ratio"]
    print()
    print(table(rows, cols))
    write_json(args.out, {"benchmark": "norms", "machine": machine(), "rounds": rounds, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
