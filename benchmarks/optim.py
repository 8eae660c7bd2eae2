"""Optimizer step time: traintricks against ``torch.optim`` (``foreach=True``) and, for LARS and LAMB,
against the ``pytorch_optimizer`` package (``foreach=True``), on ResNet-shaped parameter sets of about 1M
and 10M parameters (conv kernels, BN scales/shifts, a classifier), fp32, random fixed gradients.

Ours runs its default path: ATen's fused kernels for SGD (large tensors), Adam, AdamW, Adagrad and plain
RMSprop, multi-tensor ``torch._foreach_*`` for the rest; ``(foreach)`` rows force our multi-tensor path
(``foreach=True``) for comparison. The fused kernels take only tensors laid out alike (dense, same strides):
the ``adam (channels_last)`` row has channels_last conv kernels with contiguous gradients, which go to the
multi-tensor path (torch's ``foreach=True`` reference runs on the same tensors).
``pytorch_optimizer`` is a benchmark-only dependency (``pip install pytorch_optimizer==4.1.0``); without
it the LARS/LAMB rows are skipped.

    python benchmarks/optim.py [--rounds 15] [--out benchmarks/results/optim.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402

from traintricks.optim import LAMB, LARS, SGD, Adagrad, Adam, AdamW, RMSprop  # noqa: E402


def resnet_shapes(scale: float) -> list[tuple[int, ...]]:
    """A ResNet-18-like list of parameter shapes with stage widths b, 2b, 4b, 8b, b = 16 * scale."""
    b = int(16 * scale)
    shapes: list[tuple[int, ...]] = [(b, 3, 3, 3), (b,), (b,)]
    cin = b
    for w in (b, 2 * b, 4 * b, 8 * b):
        for i in range(2):
            shapes += [(w, cin, 3, 3), (w,), (w,), (w, w, 3, 3), (w,), (w,)]
            if cin != w:
                shapes += [(w, cin, 1, 1), (w,), (w,)]
            cin = w
    return shapes + [(10, cin), (10,)]


def make_params(shapes, seed=0, channels_last=False):
    """Parameters with fixed random gradients; ``channels_last``: 4-D ones channels_last, their gradients
    contiguous (layouts differ: the fused kernels must not take them)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    if channels_last:
        params = [p.detach().to(memory_format=torch.channels_last).requires_grad_() if p.dim() == 4 else p
                  for p in params]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 0.01
    return params


def pairs():
    out = [
        ("sgd (nesterov)", lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True), "torch"),
        ("sgd (nesterov, foreach)", lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=True), "torch"),
        ("adam", lambda p: Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True), "torch"),
        ("adam (foreach)", lambda p: Adam(p, lr=1e-3, foreach=True), lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
         "torch"),
        ("adam (channels_last)", lambda p: Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
         "torch"),
        ("adamw", lambda p: AdamW(p, lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True), "torch"),
        ("adagrad", lambda p: Adagrad(p, lr=1e-2), lambda p: torch.optim.Adagrad(p, lr=1e-2, foreach=True), "torch"),
        ("rmsprop", lambda p: RMSprop(p, lr=1e-3), lambda p: torch.optim.RMSprop(p, lr=1e-3, foreach=True), "torch"),
    ]
    try:
        import pytorch_optimizer as po
        out += [
            ("lars", lambda p: LARS(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
             lambda p: po.LARS(p, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True), "pytorch_optimizer"),
            ("lamb", lambda p: LAMB(p, lr=1e-3, weight_decay=0.01),
             lambda p: po.Lamb(p, lr=1e-3, weight_decay=0.01, foreach=True), "pytorch_optimizer"),
        ]
    except ImportError:
        print("pytorch_optimizer not installed: LARS/LAMB rows skipped", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "optim.json"))
    args = ap.parse_args()
    rows = []
    for label, scale in (("1M", 1.2), ("10M", 3.8)):
        shapes = resnet_shapes(scale)
        n = sum(torch.Size(s).numel() for s in shapes)
        for name, ours_f, ref_f, ref_name in pairs():
            cl = "channels_last" in name
            pa, pb = make_params(shapes, channels_last=cl), make_params(shapes, channels_last=cl)
            oa, ob = ours_f(pa), ref_f(pb)
            t = time_interleaved({"ours": oa.step, "ref": ob.step}, rounds=args.rounds)
            row = {"optimizer": name, "params": f"{label} ({n / 1e6:.2f}M, {len(shapes)} tensors)",
                   "reference": ref_name, "ours_ms": t["ours"] * 1e3, "ref_ms": t["ref"] * 1e3,
                   "ratio": t["ours"] / t["ref"]}
            rows.append(row)
            print(f"{name:24s} {label:4s} ours {row['ours_ms']:8.3f} ms  {ref_name} {row['ref_ms']:8.3f} ms  "
                  f"ratio {row['ratio']:.3f}", flush=True)
    print()
    print(table(rows, ["optimizer", "params", "reference", "ours_ms", "ref_ms", "ratio"]))
    write_json(args.out, {"benchmark": "optim", "machine": machine(), "rounds": args.rounds, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
