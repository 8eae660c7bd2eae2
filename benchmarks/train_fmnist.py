"""Time to 90/92/93/94% Fashion-MNIST test accuracy: the default recipe, ``configs/fast.toml``, the PyTorch
example's recipe and a plain baseline, in one invocation on one machine (issue 19).

Runs (``--runs``, any subset, in this order):

- ``recipe``: ``traintricks train`` with no config (the default recipe; precision, memory format, compile and
  threads chosen by the machine probe unless ``--precision`` forces one);
- ``fast``: ``configs/fast.toml`` (a shorter version of the default recipe's first cycle, on its own);
- ``example``: the recipe of PyTorch's ``examples/mnist/main.py``, re-written from its published
  hyper-parameters: its Net (conv 32, conv 64, max pool, dropout 0.25, fc 128, dropout 0.5, fc 10,
  log-softmax + NLL), Adadelta at lr 1.0, StepLR gamma 0.7 stepped per epoch, batch 64, 14 epochs, fp32;
- ``baseline``: what a plain example script does: the same Net, Adam at 1e-3, batch 64, no schedule, fp32.

All four train on the same tensors (the recipe's 58,000 training images; 2,000 are its validation split) and
are tested on the 10,000 test images after every epoch (the last epoch's accuracy is the run's final one, from the
evaluation after training: the default recipe's shift TTA is used there only). Times are cumulative *training* seconds at the end of
the first epoch whose test accuracy reaches each target (evaluation excluded), on the wall clock (``time_to``)
and in process CPU time (``cpu_time_to``, ``train_cpu_seconds``): on a machine shared with other jobs the CPU
time of single-threaded runs (``OMP_NUM_THREADS=1``) is the steadier comparison; ``cpu_s`` is the CPU time of the
whole run, evaluation included.

The issue's ratios (written to the JSON and printed): the recipe's time to 92% / the example's time to 92%
(goal <= 0.25), the recipe's time to 93% / the example's time to 92% (goal <= 1.0), and the recipe's total
training time / the example's 14 epochs (goal <= 1.0, with >= 94% accuracy).

    python benchmarks/train_fmnist.py [--runs recipe,fast,example,baseline] [--precision fp32]
        [--example-epochs 14] [--baseline-epochs 12] [--set key=value ...] [--reference FILE] [--out FILE]

``--precision fp32`` forces fp32 on the recipe and ``fast`` runs: the proxy for an fp32-only CPU (the example
and the baseline are fp32 everywhere).
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
from torch.nn import functional as F  # noqa: E402

from traintricks.callback import Callback  # noqa: E402
from traintricks.config import load_config  # noqa: E402
from traintricks.data import TensorLoader, load_data  # noqa: E402
from traintricks.training import build_trainer  # noqa: E402

TARGETS = (0.90, 0.92, 0.93, 0.94)
RUNS = ("recipe", "fast", "example", "baseline")
ROOT = Path(__file__).resolve().parent.parent


class ExampleNet(nn.Module):
    """The network of PyTorch's examples/mnist/main.py: two 3x3 convs (32, 64), 2x2 max pool, dropout 0.25,
    a 9216-128 linear layer, dropout 0.5, a 128-10 linear layer; it returns log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = self.dropout1(F.max_pool2d(x, 2)).flatten(1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_to(history: list[dict], key: str = "train_seconds") -> dict[str, float | None]:
    out = {}
    for t in TARGETS:
        hit = next((r for r in history if r["test_accuracy"] >= t), None)
        out[f"{t:.2f}"] = round(hit[key], 1) if hit else None
    return out


class TrainCPU(Callback):
    """Cumulative process CPU seconds of training (evaluation excluded), into each epoch's record."""

    def __init__(self) -> None:
        self.total, self.t0 = 0.0, 0.0

    def on_epoch_start(self, trainer) -> None:
        self.t0 = time.process_time()

    def on_train_epoch_end(self, trainer, record) -> None:
        self.total += time.process_time() - self.t0
        record["train_cpu_seconds"] = self.total


def run_plain(name: str, data, epochs: int, optimizer: str, seed: int) -> dict:
    """The example's recipe (``optimizer="adadelta"``: Adadelta lr 1.0, StepLR gamma 0.7 per epoch) or the plain
    baseline (``"adam"``: Adam lr 1e-3, no schedule); batch 64, fp32, NLL of the log-softmax."""
    torch.manual_seed(seed)
    model = ExampleNet()
    if optimizer == "adadelta":
        opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    else:
        opt, sched = torch.optim.Adam(model.parameters(), lr=1e-3), None
    train = TensorLoader(data.train_x, data.train_y, 64, shuffle=True, seed=seed)
    test = TensorLoader(data.test_x, data.test_y, 1000)
    history, elapsed, cpu, cpu0 = [], 0.0, 0.0, time.process_time()
    print(f"{name}:", flush=True)
    for epoch in range(epochs):
        model.train()
        train.set_epoch(epoch)
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            F.nll_loss(model(x), y).backward()
            opt.step()
        if sched is not None:
            sched.step()
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
        history.append({"epoch": epoch + 1, "train_seconds": round(elapsed, 2), "train_cpu_seconds": round(cpu, 2),
                        "test_accuracy": correct / len(data.test_y)})
        print(f"  {name} epoch {epoch + 1}: {elapsed:7.1f}s (cpu {cpu:7.1f}s)  test "
              f"{history[-1]['test_accuracy']:.4f}", flush=True)
    return {"recipe": "examples/mnist: Adadelta lr 1.0, StepLR 0.7/epoch" if optimizer == "adadelta"
            else "plain: Adam lr 1e-3, no schedule", "precision": "fp32", "threads": torch.get_num_threads(),
            "final_test_accuracy": history[-1]["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in history), "epochs": len(history),
            "train_seconds": round(elapsed, 1), "train_cpu_seconds": round(cpu, 1),
            "cpu_s": round(time.process_time() - cpu0, 1),
            "time_to": time_to(history), "cpu_time_to": time_to(history, "train_cpu_seconds"), "history": history}


def run_recipe(name: str, config: str | None, seed: int, overrides: list[str]) -> dict:
    cfg = load_config(config, [f"seed={seed}", *overrides])
    print(f"{name} ({config or 'defaults'} {' '.join(overrides)}):", flush=True)
    cpu0 = time.process_time()
    trainer = build_trainer(cfg, progress=False, callbacks=[TrainCPU(), lambda t, r: print(
        f"  {name} epoch {r['epoch']}: {r['train_seconds']:7.1f}s (cpu {r['train_cpu_seconds']:7.1f}s)  test "
        f"{r['test_accuracy']:.4f}", flush=True)])
    summary = trainer.fit()
    hist = [{"epoch": r["epoch"], "train_seconds": round(r["train_seconds"], 2),
             "train_cpu_seconds": round(r["train_cpu_seconds"], 2), "test_accuracy": r["test_accuracy"]}
            for r in trainer.history]
    if hist and summary["test_accuracy"] != hist[-1]["test_accuracy"]:
        # the evaluation after training (the recipe's tta_shift views) at the last epoch's training time; the
        # epoch's own evaluation kept beside it
        hist[-1]["test_accuracy_epoch"] = hist[-1]["test_accuracy"]
        hist[-1]["test_accuracy"] = summary["test_accuracy"]
    return {"config": config or "defaults", "overrides": overrides, "precision": summary["precision"],
            "probe": getattr(trainer, "probe", None), "threads": torch.get_num_threads(),
            "final_test_accuracy": summary["test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in hist), "epochs": summary["epochs"],
            "train_seconds": round(summary["train_seconds"], 1), "train_cpu_seconds": round(hist[-1]["train_cpu_seconds"], 1),
            "cpu_s": round(time.process_time() - cpu0, 1),
            "time_to": time_to(hist), "cpu_time_to": time_to(hist, "train_cpu_seconds"), "history": hist}


def ratios(result: dict) -> dict[str, float | None]:
    """The issue's ratios of the recipe against the example recipe (None where a time is missing)."""
    rec, ex = result.get("recipe"), result.get("example")
    if not rec or not ex:
        return {}

    def div(a, b):
        return round(a / b, 3) if a is not None and b else None
    out = {}
    for clock, to, total in (("wall", "time_to", "train_seconds"), ("cpu", "cpu_time_to", "train_cpu_seconds")):
        out[clock] = {"recipe_to_92_over_example_to_92": div(rec[to]["0.92"], ex[to]["0.92"]),
                      "recipe_to_93_over_example_to_92": div(rec[to]["0.93"], ex[to]["0.92"]),
                      "recipe_total_over_example_total": div(rec[total], ex[total])}
    out["example_epochs"] = ex["epochs"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                    help="force the recipe's and fast's precision (fp32: the proxy for an fp32-only CPU)")
    ap.add_argument("--example-epochs", type=int, default=14)
    ap.add_argument("--baseline-epochs", type=int, default=12)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the recipe run (repeatable)")
    ap.add_argument("--reference", action="append", default=[], metavar="FILE",
                    help="take the runs not in --runs (e.g. the example's 14 epochs, an expensive reference) from "
                         "this earlier result JSON of the same machine, or a recipe run of "
                         "results/issue19_ablation/drive.py (repeatable; the first file holding a run "
                         "wins); they are marked 'from' FILE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/train_fmnist.json")
    args = ap.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]      # may be empty: all from --reference
    bad = [r for r in runs if r not in RUNS]
    if bad:
        ap.error(f"--runs: unknown {bad}; choose from {', '.join(RUNS)}")
    forced = [f"precision={args.precision}"] if args.precision else []

    result: dict = {"command": "python " + " ".join(sys.argv),
                    "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                                "torch": torch.__version__, "bf16_isa": bool(_bf16_isa()),
                                "load_average_start": list(os.getloadavg())},
                    "date": time.strftime("%Y-%m-%d %H:%M")}
    data = None
    for name in runs:
        if name == "recipe":
            result[name] = run_recipe(name, None, args.seed, [*forced, *args.set])
        elif name == "fast":
            result[name] = run_recipe(name, str(ROOT / "configs" / "fast.toml"), args.seed, forced)
        else:
            if data is None:
                data = load_data("fashion_mnist", val_size=load_config()["data"]["val_size"], seed=args.seed)
            epochs = args.example_epochs if name == "example" else args.baseline_epochs
            result[name] = run_plain(name, data, epochs, "adadelta" if name == "example" else "adam", args.seed)
    for file in args.reference:
        ref = json.loads(Path(file).read_text())
        if "final_test_accuracy" in ref:       # one recipe run (results/issue19_ablation/drive.py's NAME.json)
            ref = {"recipe": ref, "command": f"drive.py {ref['config']} {' '.join(ref['overrides'])} "
                                             f"(seed in the file name)"}
        for name in RUNS:
            if name not in result and name in ref:
                result[name] = {**ref[name], "from": f"{file} ({ref.get('date', '?')}, {ref['command']})"}
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["ratios"] = ratios(result)

    print()
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, load "
          f"{result['machine']['load_average_start'][0]:.1f} -> {result['machine']['load_average_end'][0]:.1f}")
    print(f"{'':9s} {'prec':>5s} {'ep':>3s} {'final':>7s} {'best':>7s} {'train s':>8s} {'train cpu':>9s} "
          + " ".join(f"{'to ' + f'{t:.0%}':>7s}" for t in TARGETS) + "  (wall / cpu)")
    for name in RUNS:
        if name not in result:
            continue
        r = result[name]
        cells = " ".join(f"{(str(v) + 's') if v is not None else 'never':>7s}" for v in r["time_to"].values())
        cpu = " ".join(f"{(str(v) + 's') if v is not None else 'never':>7s}" for v in r["cpu_time_to"].values())
        print(f"{name:9s} {r['precision']:>5s} {r['epochs']:3d} {r['final_test_accuracy']:7.4f} "
              f"{r['best_test_accuracy']:7.4f} {r['train_seconds']:8.1f} {r['train_cpu_seconds']:9.1f} {cells}"
              f"{'  (from reference)' if 'from' in r else ''}")
        print(f"{'':9s} {'':>5s} {'':>3s} {'':>7s} {'':>7s} {'':>8s} {'cpu:':>9s} {cpu}")
    for k, v in result["ratios"].items():
        print(f"{k}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _bf16_isa() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


if __name__ == "__main__":
    main()
