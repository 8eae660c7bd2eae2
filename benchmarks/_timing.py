"""Shared helpers for the benchmark scripts: a quiet environment, interleaved timing, medians, JSON."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "4294967295"}


def quiet_environment() -> None:
    """Re-execute the script with OpenMP threads that yield when idle and no glibc mmap for big temporaries
    and no returning freed memory to the OS between calls (all only take effect at process start)."""
    if any(os.environ.get(k) != v for k, v in _ENV.items()):
        os.environ.update(_ENV)
        os.execv(sys.executable, [sys.executable] + sys.argv)


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 15, min_time: float = 0.05,
                     warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds so that machine noise
    hits every contender alike. Each round times as many calls as fill ``min_time``; the order rotates
    from round to round, because whichever runs first after another runs slower (caches, allocator)."""
    reps = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        t = time.perf_counter()
        fn()
        reps[name] = max(1, int(min_time / max(time.perf_counter() - t, 1e-6)))
    common = max(min(reps.values()), 2)   # the same count for everyone: a switch costs the next call alike
    reps = {name: common for name in fns}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            fn = fns[name]
            t = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - t) / reps[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def machine() -> dict:
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def table(rows: list[dict], cols: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``cols``."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
