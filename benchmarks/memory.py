"""Memory saved for backward, peak RSS and step time of the memory-saving techniques against their plain
forms, in one run.

1. **InPlaceABN** vs ``nn.BatchNorm2d`` + ``nn.LeakyReLU`` on (32, 64, 32, 32): bytes saved for backward
   (``torch.autograd.graph.saved_tensors_hooks``, deterministic), forward + backward time.
2. **Reversible ResNet** (``revnet``) at 1x and 4x the blocks per stage vs the same network with the blocks
   run normally: saved bytes (flat in depth for the reversible one) and step time.
3. **Checkpoint planner**: a chain of 24 conv-BN-ReLU layers; uniform ``checkpoint_sequential`` with k
   segments (ours and PyTorch's ``torch.utils.checkpoint.checkpoint_sequential``), and the planner given
   exactly the memory the k-segment version uses: measured saved bytes, predicted and measured
   recomputation. Plot: memory against recomputation.

Peak RSS is the process's high-water mark (``resource.getrusage``), reported once per section as the
increase over the section's start; it moves with the allocator and is coarser than the saved-bytes count.

    python benchmarks/memory.py [--rounds 7] [--out benchmarks/results/memory.json]
"""
from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, quiet_environment, table, time_interleaved, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402
import torch.utils.checkpoint as tuc  # noqa: E402
from torch import nn  # noqa: E402

from traintricks.memory import (CheckpointedSequential, InPlaceABN, checkpoint_sequential, evaluate_plan,  # noqa: E402
                                measure_layers, plan_checkpoints, saved_bytes, uniform_segments)
from traintricks.models import MODELS  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(fn, x):
    def run():
        xi = x.detach().requires_grad_()
        fn(xi).sum().backward()
    return run


def inplace_abn(rounds: int) -> list[dict]:
    x = torch.randn(32, 64, 32, 32)
    ours, plain = InPlaceABN(64), nn.Sequential(nn.BatchNorm2d(64), nn.LeakyReLU(0.01))
    sb_o = saved_bytes(lambda: ours(x.clone().requires_grad_()), exclude=ours)
    sb_p = saved_bytes(lambda: plain(x.clone().requires_grad_()), exclude=plain)
    t = time_interleaved({"ours": step(ours, x), "plain": step(plain, x)}, rounds=rounds)
    return [{"case": "InPlaceABN vs BN + LeakyReLU, 32x64x32x32", "ours_saved_MiB": sb_o / 2**20,
             "plain_saved_MiB": sb_p / 2**20, "saved_ratio": sb_o / sb_p, "ours_ms": t["ours"] * 1e3,
             "plain_ms": t["plain"] * 1e3, "time_ratio": t["ours"] / t["plain"]}]


def revnet(rounds: int) -> list[dict]:
    x = torch.randn(32, 3, 32, 32)
    rows, base = [], {}
    for depth in (1, 4):
        blocks = [depth] * 3
        torch.manual_seed(0)
        rev = MODELS.get("revnet")((3, 32, 32), 10, blocks=blocks, widths=[32, 64, 128])
        torch.manual_seed(0)
        plain = MODELS.get("revnet")((3, 32, 32), 10, blocks=blocks, widths=[32, 64, 128], reversible=False)
        sb_r = saved_bytes(lambda: rev(x.clone().requires_grad_()), exclude=rev)
        sb_p = saved_bytes(lambda: plain(x.clone().requires_grad_()), exclude=plain)
        base.setdefault("rev", sb_r)
        base.setdefault("plain", sb_p)
        t = time_interleaved({"ours": step(rev, x), "plain": step(plain, x)}, rounds=rounds, min_time=0.2)
        rows.append({"case": f"RevNet, {depth}x blocks per stage ({sum(blocks)} blocks)",
                     "ours_saved_MiB": sb_r / 2**20, "plain_saved_MiB": sb_p / 2**20,
                     "saved_ratio": sb_r / sb_p, "ours_vs_1x_depth": sb_r / base["rev"],
                     "plain_vs_1x_depth": sb_p / base["plain"], "ours_ms": t["ours"] * 1e3,
                     "plain_ms": t["plain"] * 1e3, "time_ratio": t["ours"] / t["plain"]})
    return rows


def planner(rounds: int, out: Path) -> list[dict]:
    """For each uniform segmentation k: its memory M_k; the planner given budget M_k; PyTorch's
    checkpoint_sequential with k segments. Recomputation is reported twice: predicted from the measured
    per-layer forward times (deterministic: the forward time of the recomputed layers) and measured (median
    step time minus the plain step time, timed in the same interleaved rounds)."""
    torch.manual_seed(0)
    n, c = 24, 32
    layers = [nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()) for _ in range(n)]
    model = nn.Sequential(*layers)
    x = torch.randn(16, c, 32, 32)
    costs = measure_layers(list(model), x, repeats=5)
    rows = []
    plain_step = step(model, x)

    def measure(kind, label, fn, predicted_ms):
        sb = saved_bytes(lambda: fn(x.clone().requires_grad_()), exclude=model)
        t = time_interleaved({"plain": plain_step, "x": step(fn, x)}, rounds=rounds)
        rows.append({"method": kind, "setting": label, "saved_MiB": sb / 2**20, "predicted_recompute_ms": predicted_ms,
                     "measured_recompute_ms": (t["x"] - t["plain"]) * 1e3, "step_ms": t["x"] * 1e3,
                     "plain_step_ms": t["plain"] * 1e3})
        print(f"{kind:28s} {label:22s} saved {sb / 2**20:7.2f} MiB  predicted recompute {predicted_ms:6.1f} ms  "
              f"measured {rows[-1]['measured_recompute_ms']:6.1f} ms", flush=True)
        return sb

    measure("plain", "-", model, 0.0)
    for k in (2, 3, 4, 6, 8):
        # the uniform plan's predicted peak (held until backward + the largest recomputed segment during it)
        peak, pred = evaluate_plan(uniform_segments(n, k), costs, x.untyped_storage().nbytes())
        measure("uniform (ours)", f"{k} segments", lambda z, k=k: checkpoint_sequential(model, k, z), pred * 1e3)
        measure("torch checkpoint_sequential", f"{k} segments",
                lambda z, k=k: tuc.checkpoint_sequential(model, k, z, use_reentrant=False), pred * 1e3)
        rows[-1]["predicted_peak_MiB"] = rows[-2]["predicted_peak_MiB"] = peak / 2**20
        plan = plan_checkpoints(model, x, peak, costs)
        measure("planner", f"peak budget of {k} segments", CheckpointedSequential(*layers, plan=plan),
                plan.predicted_recompute_seconds * 1e3)
        rows[-1]["predicted_peak_MiB"] = plan.predicted_bytes / 2**20
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, mem, title in ((axes[0], "predicted_recompute_ms", "predicted_peak_MiB",
                                 "predicted peak vs predicted recomputation"),
                                (axes[1], "measured_recompute_ms", "saved_MiB",
                                 "measured: saved at forward vs step - plain step")):
        for kind, marker in (("planner", "o-"), ("uniform (ours)", "s--"), ("torch checkpoint_sequential", "^:"),
                             ("plain", "k*")):
            pts = sorted((r.get(mem, r["saved_MiB"]), r[key]) for r in rows if r["method"] == kind)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=kind)
        ax.set(xlabel="memory (MiB)", ylabel="recomputation per step (ms)", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{n} conv-BN-ReLU layers on 16x32x32x32: memory against recomputation")
    fig.tight_layout()
    fig.savefig(out.with_name("memory_planner.png"), dpi=110)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "memory", "machine": machine(), "rounds": args.rounds}
    r0 = rss_mib()
    result["inplace_abn"] = inplace_abn(args.rounds)
    result["inplace_abn_peak_rss_increase_MiB"] = rss_mib() - r0
    print(table(result["inplace_abn"], ["case", "ours_saved_MiB", "plain_saved_MiB", "saved_ratio", "ours_ms",
                                        "plain_ms", "time_ratio"]), "\n", flush=True)
    r0 = rss_mib()
    result["revnet"] = revnet(args.rounds)
    result["revnet_peak_rss_increase_MiB"] = rss_mib() - r0
    print(table(result["revnet"], ["case", "ours_saved_MiB", "plain_saved_MiB", "ours_vs_1x_depth", "plain_vs_1x_depth",
                                   "ours_ms", "plain_ms", "time_ratio"]), "\n", flush=True)
    result["planner"] = planner(args.rounds, out)
    print(table(result["planner"], ["method", "setting", "saved_MiB", "predicted_peak_MiB", "predicted_recompute_ms",
                                    "measured_recompute_ms", "step_ms"]))
    write_json(out, result)
    print(f"\nwrote {out} and {out.with_name('memory_planner.png')}")


if __name__ == "__main__":
    main()
