"""Parallel training on this machine, three measurements (``--part``):

- ``throughput``: the same config (``configs/fast.toml`` on Fashion-MNIST) trained by ``traintricks train`` as one
  process with both threads, as two DDP processes under ``torchrun`` (one thread each) and as two Hogwild
  workers: training images per second and final test accuracy.
- ``async``: synchronous training against the asynchronous parameter server (Downpour; 2 and 4 workers) with
  DC-ASGD off and on, at equal epochs on a Fashion-MNIST subset: final test accuracy, wall time, staleness.
- ``batch``: steps to a target validation accuracy against the global batch size (Shallue et al. 2018,
  arXiv:1811.03600), each batch size at its best learning rate of a grid around square-root scaling, with a plot
  (``benchmarks/results/parallel_batch.png``). Perfect scaling halves the steps when the batch doubles.

    python benchmarks/parallel.py [--part throughput|async|batch|all] [--epochs 2] [--set key=value ...]
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
RESULTS = Path(__file__).resolve().parent / "results"


def train(label: str, prefix: list[str], args: list[str], env: dict, out: Path) -> dict:
    exe = shutil.which("traintricks", path=os.path.dirname(sys.executable))
    cmd = prefix + [exe, "train", "--out", str(out), "--no-progress"] + args
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{res.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    return s


def throughput(args) -> None:
    base = ["--config", str(ROOT / "configs" / "fast.toml"), "--set", f"epochs={args.epochs}",
            "--set", "test_every_epoch=false"] + [a for kv in args.set for a in ("--set", kv)]
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
    out = RESULTS / "parallel.json"
    write_json(out, {"benchmark": "parallel", "machine": machine(), "epochs": args.epochs, "rows": rows})
    print(f"\nwrote {out}")


ASYNC_DATA = ["data.limit=20000", "data.val_size=2000"]


def async_vs_sync(args) -> None:
    """Equal epochs on 18,000 training images: one process (2 threads), then the parameter server with 2 and 4
    single-threaded workers, DC-ASGD off and on."""
    epochs = args.async_epochs
    base = ["--config", str(ROOT / "configs" / "fast.toml"), "--set", f"epochs={epochs}",
            "--set", "test_every_epoch=false"] + [a for kv in ASYNC_DATA + args.set for a in ("--set", kv)]
    runs = [("sync, 1 process", 0, 0.0)]
    for k in (2, 4):
        for lam in (0.0, args.dc_lambda):
            runs.append((f"async, {k} workers, " + (f"DC-ASGD lambda={lam:g}" if lam else "no DC"), k, lam))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, k, lam) in enumerate(runs):
            extra = [] if not k else ["--set", "parallel.mode=async", "--set", f"parallel.workers={k}",
                                      "--set", f"parallel.dc_lambda={lam}"]
            s = train(label, [], base + extra, {"OMP_WAIT_POLICY": "PASSIVE"}, Path(tmp) / f"run{i}")
            row = {"setup": label, "train_seconds": s["train_seconds"], "test_accuracy": s["test_accuracy"],
                   "updates": s.get("updates", ""), "mean_staleness": s.get("mean_staleness", 0.0),
                   "max_staleness": s.get("max_staleness", 0)}
            rows.append(row)
            print(f"{label:36s} {s['train_seconds']:7.1f} s  test {100 * s['test_accuracy']:.2f}%  "
                  f"staleness mean {row['mean_staleness']:.2f} max {row['max_staleness']}", flush=True)
    print()
    print(table(rows, ["setup", "train_seconds", "test_accuracy", "updates", "mean_staleness", "max_staleness"]))
    out = RESULTS / "parallel_async.json"
    write_json(out, {"benchmark": "parallel_async", "machine": machine(), "epochs": epochs, "data": ASYNC_DATA,
                     "rows": rows})
    print(f"\nwrote {out}")


def steps_to_target(cfg: dict, target: float, max_epochs: int, max_steps: int | None = None) -> tuple[int | None, float]:
    """Train per ``cfg`` (constant learning rate), evaluating on the validation split every min(epoch / 8, 20) steps;
    return the first step at which validation accuracy reached ``target`` (None if never) and the seconds."""
    import time

    import torch
    from traintricks.training import build_trainer
    trainer = build_trainer(cfg, progress=False)
    model, opt, loss_fn = trainer.model, trainer.optimizer, trainer.loss_fn
    per_epoch = len(trainer.train_loader)
    every = max(1, min(per_epoch // 8, 20))          # at most 20 steps between evaluations
    step, t0 = 0, time.perf_counter()
    for epoch in range(max_epochs):
        trainer.train_loader.set_epoch(epoch)
        for x, y in trainer.train_loader:
            model.train()
            x, y = trainer.to_device(x, y)
            opt.zero_grad(set_to_none=True)
            with trainer.autocast():
                loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                return None, time.perf_counter() - t0
            loss.backward()
            opt.step()
            step += 1
            if step % every == 0 and trainer.evaluate(trainer.val_loader)["accuracy"] >= target:
                return step, time.perf_counter() - t0
            if max_steps is not None and step >= max_steps:       # cannot beat the best rate found already
                return None, time.perf_counter() - t0
    return None, time.perf_counter() - t0


def batch_scaling(args) -> None:
    from traintricks.config import load_config
    sizes = [int(b) for b in args.batches.split(",")]
    grid = [float(f) for f in args.lr_factors.split(",")]
    rows = []
    for b in sizes:
        best = None
        for f in grid:
            lr = args.base_lr * (b / 256) ** 0.5 * f       # square-root scaling around the base rate at batch 256
            cfg = load_config(ROOT / "configs" / "fast.toml", overrides=[
                f"batch_size={b}", f"lr={lr}", "schedule.name=constant", "data.limit=12000", "data.val_size=2000",
                "callbacks=[]", *args.set])
            steps, secs = steps_to_target(cfg, args.target, args.max_epochs, best["steps"] if best else None)
            print(f"batch {b:5d} lr {lr:7.4f}: " + (f"{steps} steps ({secs:.1f} s)" if steps else
                                                   "not reached (or not sooner)"), flush=True)
            if steps is not None and (best is None or steps < best["steps"]):
                best = {"batch_size": b, "lr": lr, "steps": steps, "seconds": secs, "examples": steps * b}
        rows.append(best or {"batch_size": b, "lr": None, "steps": None, "seconds": None, "examples": None})
    print()
    print(table(rows, ["batch_size", "lr", "steps", "examples", "seconds"]))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["steps"]]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog([r["batch_size"] for r in ok], [r["steps"] for r in ok], "o-", label="measured (best lr)")
    if ok:
        b0, s0 = ok[0]["batch_size"], ok[0]["steps"]
        ax.loglog([r["batch_size"] for r in ok], [s0 * b0 / r["batch_size"] for r in ok], "--", label="perfect scaling")
    ax.set_xlabel("global batch size")
    ax.set_ylabel(f"steps to {100 * args.target:.0f}% validation accuracy")
    ax.set_title("Fashion-MNIST 10k, CNN, SGD+Nesterov")
    ax.legend()
    fig.tight_layout()
    png = RESULTS / "parallel_batch.png"
    fig.savefig(png, dpi=120)
    out = RESULTS / "parallel_batch.json"
    write_json(out, {"benchmark": "parallel_batch", "machine": machine(), "target": args.target,
                     "base_lr": args.base_lr, "lr_factors": grid, "max_epochs": args.max_epochs, "rows": rows})
    print(f"\nwrote {out} and {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["throughput", "async", "batch", "all"], default="all")
    ap.add_argument("--epochs", type=int, default=2, help="throughput: epochs of the full training set")
    ap.add_argument("--async-epochs", type=int, default=4)
    ap.add_argument("--dc-lambda", type=float, default=2.0)
    ap.add_argument("--batches", default="16,32,64,128,256,512,1024")
    ap.add_argument("--lr-factors", default="0.25,0.5,1,2,4")
    ap.add_argument("--base-lr", type=float, default=0.025, help="learning rate at batch 256 before the grid")
    ap.add_argument("--target", type=float, default=0.86)
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.part in ("throughput", "all"):
        throughput(args)
    if args.part in ("async", "all"):
        async_vs_sync(args)
    if args.part in ("batch", "all"):
        batch_scaling(args)


if __name__ == "__main__":
    main()
