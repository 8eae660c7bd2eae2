"""The cost of each surgery on a ResNet-50-sized model nobody here wrote (issue 17: "tracing + rewriting a
ResNet-50-sized model in under 2 s").

Each surgery of :mod:`traintricks.surgery` is applied to a fresh ``resnet50()`` of ``tests/surgery/user_models.py``
(torchvision's layout: F.relu, functional residual adds, 25.6 M parameters, 53 batch norms, 16 blocks); the time of
the call -- tracing / running the model as the surgery needs, analysis and rewriting -- is measured ``--repeats``
times (a new model each time, built outside the timing), and the table gives the median wall time, the fastest, the
median process CPU time (all threads: on a loaded machine the wall time grows, this does not) and the ratio of the
median to the issue's goal of 2 s (< 1: within it).

    python benchmarks/surgery.py [--repeats 3] [--out benchmarks/results/surgery.json]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _timing import machine, quiet_environment, table, write_json  # noqa: E402

quiet_environment()

import torch  # noqa: E402

from tests.surgery.user_models import resnet50  # noqa: E402
from traintricks.surgery import (NothingToChangeError, add_dropconnect, add_dropout, add_shakedrop,  # noqa: E402
                                 add_stochastic_depth, checkpoint, checkpoint_blocks, convert_norms, fold_batchnorm,
                                 sync_batchnorm, to_inplace_abn, zero_init_residual)

GOAL_S = 2.0
EXAMPLE = (2, 3, 64, 64)        # checkpoint's example input: batch 2 (training-mode batch norm), 64x64


def _min_budget(x: torch.Tensor) -> int:
    """The least budget checkpoint() accepts on resnet50 for ``x`` (read from its error, outside the timing)."""
    try:
        checkpoint(resnet50(), x, 0)
    except ValueError as e:
        return int(re.search(r"is (\d+) bytes", str(e)).group(1))
    raise AssertionError("a zero budget was accepted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/surgery.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(*EXAMPLE)
    budget = _min_budget(x)
    cases = {
        "convert_norms(groupnorm)": (lambda: resnet50(), lambda m: convert_norms(m, "groupnorm")),
        "convert_norms(batchrenorm)": (lambda: resnet50(), lambda m: convert_norms(m, "batchrenorm")),
        "sync_batchnorm": (lambda: resnet50(), sync_batchnorm),
        "to_inplace_abn (refused: ReLU)": (lambda: resnet50(), to_inplace_abn),
        "fold_batchnorm (eval)": (lambda: resnet50().eval(), fold_batchnorm),
        "checkpoint_blocks(type:Bottleneck)": (lambda: resnet50(), lambda m: checkpoint_blocks(m, "type:Bottleneck")),
        f"checkpoint(budget {budget / 2**20:.1f} MiB, input {'x'.join(map(str, EXAMPLE))})":
            (lambda: resnet50(), lambda m: checkpoint(m, x, budget)),
        "add_stochastic_depth(0.1)": (lambda: resnet50(), lambda m: add_stochastic_depth(m, 0.1)),
        "add_shakedrop": (lambda: resnet50(), add_shakedrop),
        "zero_init_residual": (lambda: resnet50(), zero_init_residual),
        "add_dropout(before=last:type:Linear)": (lambda: resnet50(), lambda m: add_dropout(m, 0.2)),
        "add_dropconnect(type:Conv2d)": (lambda: resnet50(), lambda m: add_dropconnect(m, 0.1, where="type:Conv2d")),
    }
    rows = []
    for name, (build, surgery) in cases.items():
        times, cpu, changed = [], [], 0
        for _ in range(args.repeats):
            model = build()
            t, c = time.perf_counter(), time.process_time()
            try:
                changed = len(surgery(model))
            except NothingToChangeError:
                changed = 0
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        med = statistics.median(times)
        rows.append({"surgery": name, "changed": changed, "median_s": med, "min_s": min(times),
                     "cpu_s": statistics.median(cpu), "goal_ratio": med / GOAL_S})
        print(f"{name}: {med:.3f} s ({changed} changed)", flush=True)
    print()
    print(table(rows, ["surgery", "changed", "median_s", "min_s", "cpu_s", "goal_ratio"]))
    write_json(args.out, {"machine": machine(), "goal_s": GOAL_S, "repeats": args.repeats, "model": "resnet50()",
                          "rows": rows})


if __name__ == "__main__":
    main()
