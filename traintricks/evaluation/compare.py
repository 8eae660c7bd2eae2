"""Ablations: ``traintricks compare --config BASE.toml --vary key=v1,v2,... [--vary ...] [--seeds N] [--jobs J]``.

Every combination of the varied values (their Cartesian product) is trained with ``N`` seeds, each run a separate
``traintricks train`` process (``J`` at a time; with ``J`` > 1 each gets ``cores / J`` threads). Every variant's
config is validated before anything runs. The report (``report.html``, self-contained, plus ``curves.png``,
``accuracy.png`` and ``compare.json``) shows the learning curves overlaid (mean over seeds), and a table of final
test accuracy and best validation accuracy as mean +- sample standard deviation over seeds, training time and peak
memory (the child process's maximum resident set size, from ``wait4``) per variant. A run that fails or diverges
is reported as such; the others go on.

The metric is the run's task's primary metric (:mod:`traintricks.evaluation.tasks`; the task is ``summary.json``'s
``task`` of the first finished run, absent = classification): ``test_<primary>`` from each ``summary.json`` and
the best (highest or lowest, by the task's mode) ``val_<primary>`` of each ``metrics.jsonl``. ``compare.json``'s
variant rows name them after it -- ``test_<primary>_mean``/``_std``, ``best_val_<primary>_mean``/``_std``,
``per_seed_test_<primary>`` and the curves ``val_<primary>``/``test_<primary>`` -- so a classification comparison
keeps its ``test_accuracy_mean`` etc.; the result's ``task`` and ``metric`` say which. Fractions (accuracy, F1...)
are shown as percentages, other metrics (RMSE, R^2...) as they are.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .html import esc, image, page, pyplot, savefig, table


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` on commas outside brackets, braces and quotes (so ``[16, 32],[8, 16]`` is two)."""
    out, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``key=v1,v2`` -> ``("key", ["v1", "v2"])``."""
    from ..config import ConfigError
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(spec, "--vary expects key=v1,v2,...")
    vals = [v for v in split_values(values) if v]
    if not vals:
        raise ConfigError(key, "--vary needs at least one value")
    return key, vals


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "run"


def label(values: dict[str, str]) -> str:
    """A variant as the user wrote it: ``key=value`` pairs, comma-separated (``model.name=mypkg.nets:Net``)."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def variant_dirs(combos: Sequence[dict[str, str]]) -> list[str]:
    """One directory name per variant: its ``key=value`` pairs made file-name safe and joined by ``__``; two
    variants whose values differ only in characters a file name cannot hold (``a:b`` and ``a_b``), or in what
    the 80-character cut drops, get ``-2``, ``-3``... appended, so that no two share a directory."""
    out: list[str] = []
    for var in combos:
        name = "__".join(_slug(f"{k}={v}") for k, v in var.items())
        unique, n = name, 1
        while unique in out:
            n += 1
            unique = f"{name}-{n}"
        out.append(unique)
    return out


def variants(varies: Sequence[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The Cartesian product of the varied values, as ``{key: value}`` dicts (in the order given)."""
    keys = [k for k, _ in varies]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in varies])]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def _check_variant(cfg: dict[str, Any], shapes: dict[str, tuple]) -> None:
    """Build the variant's model on its dataset's input shape (loaded once per data config): model options that
    the config schema cannot check (a norm's name, widths...) fail now, naming the key."""
    from ..training.recipe import build_data, build_model
    d = cfg["data"]
    key = json.dumps(d, sort_keys=True) + str(cfg["seed"])
    if key not in shapes:
        data = build_data(cfg)
        shapes[key] = (data.input_shape, data.num_classes)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_model(cfg, *shapes[key])


def _launch(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    fh = open(log, "w")
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    p._log = fh                                       # closed when reaped
    return p


def run_compare(config: str | None, varies: Sequence[str], seeds: int = 1, sets: Sequence[str] = (),
                out: str | Path = "runs/compare", jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run the ablation and write its report; return the ``compare.json`` content."""
    from ..config import ConfigError, load_config
    if seeds < 1:
        raise ConfigError("--seeds", f"must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError("--jobs", f"must be >= 1, got {jobs}")
    parsed = [parse_vary(v) for v in varies]
    if not parsed:
        raise ConfigError("--vary", "give at least one --vary key=v1,v2,...")
    out = Path(out)
    if (out / "compare.json").exists():
        raise ConfigError("--out", f"{out} already holds a comparison; choose another --out")
    base = load_config(config, list(sets))
    base_seed = base["seed"]
    runs = []
    shapes: dict[str, tuple] = {}
    combos = variants(parsed)
    for var, name in zip(combos, variant_dirs(combos)):
        overrides = list(sets) + [f"{k}={v}" for k, v in var.items()]
        _check_variant(load_config(config, overrides), shapes)     # every variant is valid before anything runs
        for s in range(seeds):
            runs.append({"variant": name, "values": var, "seed": base_seed + s,
                         "overrides": overrides + [f"seed={base_seed + s}"], "dir": out / name / f"seed-{base_seed + s}"})
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ}
    if jobs > 1:
        env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    pending, active, t0 = list(runs), {}, time.perf_counter()
    while pending or active:
        while pending and len(active) < jobs:
            r = pending.pop(0)
            r["dir"].parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "traintricks.cli", "train", "--no-progress", "--out", str(r["dir"])]
            if config:
                cmd += ["--config", str(config)]
            for kv in r["overrides"] + ([f"threads={threads}"] if jobs > 1 else []):
                cmd += ["--set", kv]
            r["started"] = time.perf_counter()
            p = _launch(cmd, env, r["dir"].parent / f"seed-{r['seed']}.log")
            active[p.pid] = (p, r)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in active:
            continue
        p, r = active.pop(pid)
        p._log.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        r["seconds"] = time.perf_counter() - r["started"]
        r["peak_rss_mb"] = usage.ru_maxrss / 1024                 # Linux reports kilobytes
        r["exit_code"] = p.returncode
        summary_file = r["dir"] / "summary.json"
        r["summary"] = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        mf = r["dir"] / "metrics.jsonl"
        r["history"] = [json.loads(x) for x in mf.read_text().splitlines()] if mf.is_file() else []
        r["status"] = (r["summary"] or {}).get("status", "failed") if p.returncode in (0, 1) else "failed"
        if progress:
            t = _task_of([r])
            val = (r["summary"] or {}).get(f"test_{t.primary}")
            shown = "" if val is None else (f", test {100 * val:.2f}%" if t.primary == "accuracy" else
                                            f", test {t.primary} {val:.4f}")
            print(f"[{len(runs) - len(pending) - len(active)}/{len(runs)}] {label(r['values'])} seed {r['seed']}: "
                  f"{r['status']}" + shown + f" ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    result = _aggregate(parsed, runs, seeds, config, sets, time.perf_counter() - t0)
    write_compare_report(out, result)
    return result


def _task_of(runs):
    """The task of the first run with a summary (classification when none says)."""
    from .tasks import get_task
    for r in runs:
        if r.get("summary"):
            return get_task(r["summary"].get("task", "classification"))
    return get_task("classification")


def _aggregate(parsed, runs, seeds, config, sets, wall) -> dict[str, Any]:
    rows = []
    names = list(dict.fromkeys(r["variant"] for r in runs))
    task = _task_of([r for r in runs if r["status"] == "finished"] or runs)
    m = task.primary
    best = max if task.mode == "max" else min
    for name in names:
        rs = [r for r in runs if r["variant"] == name]
        ok = [r for r in rs if r["status"] == "finished"]
        test = [r["summary"][f"test_{m}"] for r in ok if f"test_{m}" in r["summary"]]
        best_val = [best(h[f"val_{m}"] for h in r["history"] if f"val_{m}" in h) for r in ok
                    if any(f"val_{m}" in h for h in r["history"])]
        tm, ts = _mean_std(test)
        vm, vs = _mean_std(best_val)
        sm, _ = _mean_std([r["summary"]["train_seconds"] for r in ok])
        mm, _ = _mean_std([r["peak_rss_mb"] for r in rs])
        curves = {}
        for key in ("train_loss", f"val_{m}", f"test_{m}"):
            hs = [[h[key] for h in r["history"] if key in h] for r in ok]
            hs = [h for h in hs if h]
            if hs:
                n = min(len(h) for h in hs)
                curves[key] = [sum(h[i] for h in hs) / len(hs) for i in range(n)]
        rows.append({"variant": name, "label": label(rs[0]["values"]), "values": rs[0]["values"], "runs": len(rs),
                     "finished": len(ok),
                     "failed": [f"seed {r['seed']}: {r['status']}" for r in rs if r["status"] != "finished"],
                     f"test_{m}_mean": tm, f"test_{m}_std": ts, f"best_val_{m}_mean": vm,
                     f"best_val_{m}_std": vs, "train_seconds_mean": sm, "peak_rss_mb_mean": mm,
                     f"per_seed_test_{m}": test, "curves": curves})
    return {"task": task.name, "metric": m, "config": str(config) if config else None, "sets": list(sets), "vary": [f"{k}={','.join(v)}" for k, v in parsed],
            "seeds": seeds, "wall_seconds": wall, "variants": rows,
            "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items() if k not in ("history", "summary")}
                     | {"summary": r["summary"]} for r in runs]}


def write_compare_report(out: Path, result: dict[str, Any]) -> Path:
    """``compare.json``, ``curves.png``, ``accuracy.png`` and the self-contained ``report.html``."""
    from ..training import checkpoint as ckpt
    from .tasks import get_task
    task = get_task(result.get("task", "classification"))
    m = result.get("metric", task.primary)
    pct = m in task.fractions
    scale = 100 if pct else 1
    label = ("accuracy" if m == "accuracy" else m) + (" (%)" if pct else "")
    plt = pyplot()
    rows = result["variants"]
    shown = {id(r): r.get("label") or r["variant"] for r in rows}      # as the user wrote the values
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        c = r["curves"]
        if "train_loss" in c:
            axes[0].plot(range(1, len(c["train_loss"]) + 1), c["train_loss"], marker="o", ms=3, label=shown[id(r)])
        acc = c.get(f"val_{m}") or c.get(f"test_{m}")
        if acc:
            axes[1].plot(range(1, len(acc) + 1), [scale * a for a in acc], marker="o", ms=3, label=shown[id(r)])
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel(f"validation {label}" if any(f"val_{m}" in r["curves"] for r in rows) else
                       f"test {label}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"mean over {result['seeds']} seed(s)")
    fig.tight_layout()
    curves = savefig(fig, out / "curves.png")
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.5))
    ok = [r for r in rows if not math.isnan(r[f"test_{m}_mean"])]
    ax.bar(range(len(ok)), [scale * r[f"test_{m}_mean"] for r in ok],
           yerr=[scale * r[f"test_{m}_std"] for r in ok], capsize=4)
    ax.set_xticks(range(len(ok)), [shown[id(r)] for r in ok], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"final test {label}")
    if ok and pct:
        lo = min(100 * (r[f"test_{m}_mean"] - r[f"test_{m}_std"]) for r in ok)
        ax.set_ylim(max(0, lo - 2), 100)
    fig.tight_layout()
    bars = savefig(fig, out / "accuracy.png")
    ckpt.atomic_write_json(out / "compare.json", result)

    def pm(mean, s, pct=True):
        if math.isnan(mean):
            return "n/a"
        return f"{100 * mean:.2f} ± {100 * s:.2f}" if pct else f"{mean:.1f}"

    def pm_metric(mean, s):
        return pm(mean, s) if pct else ("n/a" if math.isnan(mean) else f"{mean:.4f} ± {s:.4f}")
    trs = [{"variant": shown[id(r)], "dir": r["variant"], "runs": f"{r['finished']}/{r['runs']}",
            "test": pm_metric(r[f"test_{m}_mean"], r[f"test_{m}_std"]),
            "val": pm_metric(r[f"best_val_{m}_mean"], r[f"best_val_{m}_std"]),
            "time": pm(r["train_seconds_mean"], 0, pct=False), "mem": pm(r["peak_rss_mb_mean"], 0, pct=False),
            "failed": "; ".join(r["failed"])} for r in rows]
    pick = max if task.metrics.get(m, task.mode) == "max" else min
    best = pick(ok, key=lambda r: r[f"test_{m}_mean"], default=None)
    short = "acc %" if m == "accuracy" else (f"{m} %" if pct else m)
    intro = (f"{len(rows)} variant(s) x {result['seeds']} seed(s), {result['wall_seconds']:.0f} s in all. Varied: "
             + esc("; ".join(result["vary"]))
             + ("" if task.name == "classification" else f". Task: {esc(task.name)}, metric: {esc(m)} "
                f"({'higher' if pick is max else 'lower'} is better)")
             + (f". Best final test {'accuracy' if m == 'accuracy' else esc(m)}: <b>{esc(shown[id(best)])}</b>."
                if best else "."))
    sections = [("Results", table(trs, ["variant", "dir", "runs", "test", "val", "time", "mem", "failed"],
                                  ["variant", "directory", "finished", f"final test {short} (mean ± std)",
                                   f"best val {short} (mean ± std)", "training s (mean)", "peak RSS MB (mean)",
                                   "failed runs"])),
                ("Learning curves", image(curves, "curves")),
                ("Final accuracy" if m == "accuracy" else f"Final {m}", image(bars, "accuracy" if m == "accuracy" else m)),
                ("Base", f"<pre>config: {esc(result['config'])}\n--set: {esc(' '.join(result['sets']))}</pre>")]
    path = out / "report.html"
    ckpt.atomic_write_text(path, page("traintricks compare", sections, intro))
    return path
