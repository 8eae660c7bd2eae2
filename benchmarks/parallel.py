"""Training throughput of one process against two on this machine: the same config (``configs/fast.toml`` on
Fashion-MNIST by default) trained by ``traintricks train`` as one process with all threads, as two DDP processes
under ``torchrun`` (one thread each) and as two Hogwild workers. Reports training images per second (from
``summary.json``: training examples x epochs / training seconds) and the final test accuracy.

    python benchmarks/parallel.py [--epochs 2] [--set key=value ...] [--out benchmarks/results/parallel.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def train(label: str, prefix: list[str], args: list[str], env: dict, out: Path) -> dict:
    exe = shutil.which("traintricks", path=os.path.dirname(sys.executable))
    cmd = prefix + [exe, "train", "--out", str(out), "--no-progress"] + args
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{res.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "parallel.json"))
    args = ap.parse_args()
    base = ["--config", str(ROOT / "configs" / "fast.toml"), "--set", f"epochs={args.epochs}",
            "--set", "eval.test_every_epoch=false"] + [a for kv in args.set for a in ("--set", kv)]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    runs = [("1 process, 2 threads", [], [], {"OMP_WAIT_POLICY": "PASSIVE"}),
            ("2 DDP processes x 1 thread", [torchrun, "--nproc_per_node=2", "--master_port=29541", "--no-python"], [],
             {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
            ("2 Hogwild workers x 1 thread", [], ["--set", "parallel.mode=hogwild", "--set", "parallel.workers=2"],
             {"OMP_WAIT_POLICY": "PASSIVE"})]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, prefix, extra, env) in enumerate(runs):
            s = train(label, prefix, base + extra, env, Path(tmp) / f"run{i}")
            n = 60000 - 2000                                  # fast.toml: 2,000 validation images held out
            ips = n * args.epochs / s["train_seconds"]
            rows.append({"setup": label, "train_seconds": s["train_seconds"], "images_per_s": ips,
                         "test_accuracy": s["test_accuracy"]})
            print(f"{label:30s} {s['train_seconds']:7.1f} s  {ips:8.0f} images/s  test {100 * s['test_accuracy']:.2f}%",
                  flush=True)
    for r in rows:
        r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
    print()
    print(table(rows, ["setup", "train_seconds", "images_per_s", "speedup", "test_accuracy"]))
    write_json(args.out, {"benchmark": "parallel", "machine": machine(), "epochs": args.epochs, "rows": rows})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
