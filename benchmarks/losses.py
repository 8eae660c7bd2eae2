"""Cost of traintricks' losses against the PyTorch function computing the same thing: forward, and forward +
backward, in alternating rounds (CPU). A ratio near 1.0 means no overhead (no host synchronization, no extra pass).

| ours | against |
|---|---|
| CrossEntropy() | F.cross_entropy |
| CrossEntropy(label_smoothing=0.1, class_weights=w) | F.cross_entropy(weight=w, label_smoothing=0.1) |
| L1Loss / L2Loss / HuberLoss | F.l1_loss / F.mse_loss / F.huber_loss |
| KLDivergence() on soft targets | F.kl_div(log_softmax(z), q, reduction="batchmean") |

    python benchmarks/losses.py [--rounds 15] [--out benchmarks/results/losses.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from traintricks.losses import CrossEntropy, HuberLoss, KLDivergence, L1Loss, L2Loss  # noqa: E402


def cases():
    torch.manual_seed(0)
    out = []
    for n, k in ((512, 10), (256, 1000)):
        z, y = torch.randn(n, k), torch.randint(0, k, (n,))
        w = torch.rand(k) + 0.5
        q = torch.softmax(torch.randn(n, k), 1)
        t = torch.randn(n, k)
        out += [
            (f"cross_entropy {n}x{k}", CrossEntropy(), lambda z, y=y: F.cross_entropy(z, y), z, y),
            (f"cross_entropy smooth+weights {n}x{k}", CrossEntropy(label_smoothing=0.1, class_weights=w),
             lambda z, y=y, w=w: F.cross_entropy(z, y, weight=w, label_smoothing=0.1), z, y),
            (f"kl_divergence {n}x{k}", KLDivergence(),
             lambda z, q=q: F.kl_div(torch.log_softmax(z, 1), q, reduction="batchmean"), z, q),
        ]
        if k == 10:
            out += [(f"l1 {n}x{k}", L1Loss(), lambda z, t=t: F.l1_loss(z, t), z, t),
                    (f"l2 {n}x{k}", L2Loss(), lambda z, t=t: F.mse_loss(z, t), z, t),
                    (f"huber {n}x{k}", HuberLoss(), lambda z, t=t: F.huber_loss(z, t), z, t)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "losses.json"))
    args = ap.parse_args()
    rows = []
    for name, ours, ref, z, target in cases():
        zg = z.clone().requires_grad_()

        def fwd(fn):
            return lambda: fn(z, target) if fn is ours else fn(z)

        def fwd_bwd(fn):
            def step():
                (fn(zg, target) if fn is ours else fn(zg)).backward()
                zg.grad = None
            return step
        tf = time_interleaved({"ours": fwd(ours), "torch": fwd(ref)}, rounds=args.rounds)
        tb = time_interleaved({"ours": fwd_bwd(ours), "torch": fwd_bwd(ref)}, rounds=args.rounds)
        row = {"loss": name, "fwd_ours_us": tf["ours"] * 1e6, "fwd_torch_us": tf["torch"] * 1e6,
               "fwd_ratio": tf["ours"] / tf["torch"], "fwd_bwd_ratio": tb["ours"] / tb["torch"]}
        rows.append(row)
        print(f"{name:40s} fwd {row['fwd_ours_us']:8.1f} us vs {row['fwd_torch_us']:8.1f} us  ratio "
              f"{row['fwd_ratio']:.3f}   fwd+bwd ratio {row['fwd_bwd_ratio']:.3f}", flush=True)
    print()
    print(table(rows, ["loss", "fwd_ours_us", "fwd_torch_us", "fwd_ratio", "fwd_bwd_ratio"]))
    write_json(args.out, {"benchmark": "losses", "machine": machine(), "rounds": args.rounds, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
