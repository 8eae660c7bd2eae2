"""The ``traintricks`` command line.

    traintricks train [--config FILE.toml] [--set key=value ...] [--out DIR] [--no-progress]
    traintricks train --resume DIR
    traintricks list
    traintricks config [--config FILE.toml] [--set key=value ...]
    traintricks lr-find [--config FILE.toml] [--set key=value ...] [--out DIR] [--start LR] [--end LR] [--steps N]
    traintricks report DIR [--set data.root=NEW] [--set data.factory=NEW] [--set model.name=NEW]
    traintricks compare [--config BASE.toml] --vary key=v1,v2,... [--vary ...] [--seeds N] [--jobs J] [--out DIR]
    traintricks lab [CLAIM ...] [--out DIR] [--quick] [--set data.KEY=VALUE ...] [--set model.KEY=VALUE ...]
    traintricks average RUN_DIR --last K [--out FILE] [--bn average|recompute] [--no-eval]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .config import ConfigError, load_config, to_toml, with_factory_defaults


def _cmd_train(args: argparse.Namespace) -> int:
    from .data import DataError
    from .training import CheckpointError, NonFiniteLossError, RunExistsError, run

    out: Path | None = None
    try:
        if args.resume:
            if args.config or args.set or args.out:
                print("traintricks: error: --resume continues a run exactly as configured; do not combine it with "
                      "--config, --set or --out (to train further, start a new run, e.g. with more epochs)",
                      file=sys.stderr)
                return 2
            out, cfg = Path(args.resume), None
        else:
            cfg = load_config(args.config, args.set)
            out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
        summary = run(cfg, out, resume=bool(args.resume), progress=not args.no_progress)
    except (ConfigError, DataError, CheckpointError, RunExistsError) as e:
        hint = ""
        if args.resume and (isinstance(e, DataError) or getattr(e, "key", "") in ("model.name", "data.factory")):
            # the run is rebuilt from its config.toml: its relative paths and modules are read from here
            hint = (f" -- resuming rebuilds the run in {args.resume} from its config.toml: run it from the directory "
                    f"the run was started in (relative paths and modules are found from the working directory, now "
                    f"{os.getcwd()}), with the data and the module where they were")
        print(f"traintricks: error: {e}{hint}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = f"; continue with: traintricks train --resume {out}" if out is not None else ""
        print(f"\ntraintricks: interrupted{hint}", file=sys.stderr)
        return 130
    from .parallel import cleanup, dist_info
    info = dist_info()
    if info.is_main:
        keys = ("best_epoch", "epochs", "train_seconds", "wall_seconds", "stopped_early")
        tests = [k for k in summary if k.startswith("test_") and k != "test_loss"]     # the task's test metrics
        print(json.dumps({k: summary[k] for k in (*tests, *keys) if k in summary}))
        names = ("summary.json", "metrics.jsonl", "curves.png", "report.md", "model.safetensors")
        print(f"wrote {out}/{', '.join(n for n in names if (out / n).exists())}", file=sys.stderr)
    if info.distributed:
        # leave the group, then exit at once: gloo can abort at interpreter exit after destroy_process_group
        cleanup()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .catalog import all_registries

    for reg in all_registries():
        print(f"{reg.plural} ({reg.section}):")
        for name in reg.names():
            opts = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v!r}" for k, v in reg.defaults(name).items())
            print(f"  {name:16s} {reg.summary(name)}")
            if opts and args.verbose:
                print(f"  {'':16s} options: {opts}")
        print()
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(to_toml(with_factory_defaults(cfg)))
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from .data import DataError
    from .optim.lr_find import lr_find, plot_lr_find
    from .optim.schedules import ScheduleWarning
    from .training import build_trainer

    try:
        cfg = load_config(args.config, args.set)
        with warnings.catch_warnings():
            # the range test steps its own rates over --steps batches: the run's schedule and epochs (and what
            # the recipe warns about them) do not apply
            warnings.filterwarnings("ignore", category=ScheduleWarning)
            warnings.filterwarnings("ignore", message="data.augment is never applied")
            trainer = build_trainer(cfg, progress=False)
    except (ConfigError, DataError) as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 2

    def forward(x):
        with trainer.autocast():
            return trainer.forward(x)

    result = lr_find(trainer.model, _Cycle(trainer), trainer.loss_fn, trainer.optimizer, args.start, args.end,
                     args.steps, forward=forward)
    out = Path(args.out or f"runs/lr-find-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_lr_find(result, out / "lr_find.png")
    print(json.dumps({"suggested_lr": result["suggestion"], "steps": len(result["lr"])}))
    print(f"wrote {out}/lr_find.png, lr_find.json", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .config import ConfigError as _CE
    from .data import DataError
    from .evaluation.report import ReportError, render_run_report
    from .training import CheckpointError
    try:
        path = render_run_report(args.dir, args.set)
    except (ReportError, CheckpointError, DataError, _CE) as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 2
    extra = [n for n in ("report.json", "confusion.png", "per_class.png", "lr_schedule.png", "grad_norm.png",
                         "predictions.png", "residuals.png", "per_label.png") if (Path(path).parent / n).exists()]
    print(f"wrote {path}" + (f" (and {', '.join(extra)})" if extra else ""), file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .data import DataError
    from .evaluation.compare import run_compare
    out = args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_compare(args.config, args.vary, seeds=args.seeds, sets=args.set, out=out, jobs=args.jobs)
    except (ConfigError, DataError) as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 2
    m = result["metric"]                       # the task's primary metric: accuracy, rmse, micro_f1...
    for r in result["variants"]:
        print(json.dumps({"variant": r.get("label", r["variant"]), f"test_{m}_mean": r[f"test_{m}_mean"],
                          f"test_{m}_std": r[f"test_{m}_std"], "finished": r["finished"], "runs": r["runs"]}))
    print(f"wrote {out}/report.html, compare.json, curves.png, accuracy.png", file=sys.stderr)
    return 0 if all(r["finished"] for r in result["variants"]) else 1


def _cmd_lab(args: argparse.Namespace) -> int:
    from .data import DataError
    from .evaluation.lab import CLAIMS, Lab, LabError, run_claim
    if not args.claims:
        print("The notes' testable claims (run one with: traintricks lab CLAIM, or all of them: traintricks lab all;\n"
              "on your data and model: --set data.name=... --set model.name=pkg.module:factory where a claim "
              "takes them):\n")
        for c in CLAIMS.values():
            print(f"  {c.name:28s} {c.text}")
            print(f"  {'':28s} experiment: {c.how}")
            print(f"  {'':28s} criterion: {c.criterion_text()}")
            print(f"  {'':28s} {c.scope()}")
            print(f"  {'':28s} source: {c.source}\n")
        return 0
    names = list(CLAIMS) if args.claims == ["all"] else args.claims
    unknown = [n for n in names if n not in CLAIMS]
    if unknown:
        print(f"traintricks: error: unknown claim(s) {', '.join(unknown)}; choose from: {', '.join(CLAIMS)} or all",
              file=sys.stderr)
        return 2
    try:
        lab = Lab(out=Path(args.out), quick=args.quick, root=args.root, sets=args.set, seeds=args.seeds,
                  precisions=tuple(args.precision or ("fp32", "bf16")))
    except (ConfigError, ValueError) as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 2
    code = 0
    for name in names:
        claim = CLAIMS[name]
        ignored = [s for s in args.set if (s.startswith("data.") and not claim.takes_data)
                   or (s.startswith("model.") and not claim.takes_model)]
        if ignored:
            print(f"{name}: runs without {' '.join(ignored)} -- it {claim.scope()}", file=sys.stderr)
        try:
            v = run_claim(name, lab)
        except (LabError, ConfigError, DataError) as e:
            # one claim that cannot run on the given data or model does not stop the others (lab all)
            print(f"traintricks: error: {'' if isinstance(e, LabError) else name + ': '}{e}", file=sys.stderr)
            code = 2
            continue
        quick = " [--quick: a plumbing check on tiny data, not a verdict]" if args.quick else ""
        print(f"{name}: {v['verdict']} ({v['reason']}) -- {v['summary']} "
              f"[{v['seconds']:.0f} s, {v['cpu_seconds']:.0f} s CPU, plot {v['plot']}]{quick}", flush=True)
    return code


def _cmd_average(args: argparse.Namespace) -> int:
    from .training import CheckpointError
    from .training.average import average_run
    try:
        result = average_run(args.dir, args.last, args.out, bn=args.bn, evaluate=not args.no_eval)
    except (CheckpointError, ConfigError, ValueError) as e:
        print(f"traintricks: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k not in ("run",)}))
    if result.get("evaluated") is False:
        print(f"traintricks: not evaluated: {result['reason']}", file=sys.stderr)
    print(f"wrote {result['out']}", file=sys.stderr)
    return 0


class _Cycle:
    """The trainer's training batches, moved to its device and memory format."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __iter__(self):
        for x, y in self.trainer.train_loader:
            yield self.trainer.to_device(x, y)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="traintricks", description="Train deep networks with the techniques of the "
                                "course notes, each implemented from its math and verified.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (default: the default recipe on Fashion-MNIST)")
    t.add_argument("--config", help="TOML config file (defaults fill what it leaves out)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set lr=0.1 --set model.name=mlp (repeatable)")
    t.add_argument("--out", help="output directory (default: runs/<timestamp>)")
    t.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=_cmd_train)
    ls = sub.add_parser("list", help="list every technique usable by name in a config")
    ls.add_argument("-v", "--verbose", action="store_true", help="also list each technique's options")
    ls.set_defaults(func=_cmd_list)
    c = sub.add_parser("config", help="print the resolved config (defaults + file + overrides) as TOML")
    c.add_argument("--config")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(func=_cmd_config)
    f = sub.add_parser("lr-find", help="learning-rate range test: loss against an exponentially growing rate, "
                                       "with a plot and a suggested rate")
    f.add_argument("--config")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--out", help="output directory (default: runs/lr-find-<timestamp>)")
    f.add_argument("--start", type=float, default=1e-5, help="first learning rate (default 1e-5)")
    f.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    f.add_argument("--steps", type=int, default=100, help="mini-batches (default 100)")
    f.set_defaults(func=_cmd_lr_find)
    r = sub.add_parser("report", help="render report.html of a finished run: curves, confusion matrix, per-class "
                                      "accuracy, learning-rate schedule, gradient norms")
    r.add_argument("dir", help="the run directory (holds summary.json, config.toml, model.safetensors)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="where the run's data or model code is now, if moved: data.root, data.factory, model.name")
    r.set_defaults(func=_cmd_report)
    cp = sub.add_parser("compare", help="ablation: train every combination of --vary values over seeds; one HTML "
                                        "report with overlaid curves, mean ± std accuracy, time and memory")
    cp.add_argument("--config", help="the base config (defaults fill what it leaves out)")
    cp.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="a key and its values (repeatable: the Cartesian product is run)")
    cp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override for every run")
    cp.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    cp.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1: sequential)")
    cp.add_argument("--out", help="output directory (default: runs/compare-<timestamp>)")
    cp.set_defaults(func=_cmd_compare)
    lb = sub.add_parser("lab", help="list the notes' testable claims, or run small seeded experiments that check them")
    lb.add_argument("claims", nargs="*", help="claim names, or 'all' (none: list them)")
    lb.add_argument("--out", default="runs/lab", help="where CLAIM.png and CLAIM.json go (default runs/lab)")
    lb.add_argument("--quick", action="store_true", help="tiny versions on the bundled digits set (plumbing only)")
    lb.add_argument("--root", default="", help="Fashion-MNIST directory (default: $TRAINTRICKS_DATA or the system copy)")
    lb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="your data or model: data.* and model.* keys (e.g. --set data.name=folder --set "
                         "data.root=photos --set model.name=mypkg.nets:Net), for the claims that take them")
    lb.add_argument("--seeds", type=int, default=3, help="seeds each claim runs over (default 3; the verdict needs "
                                                         "its margin over them)")
    lb.add_argument("--precision", action="append", choices=["fp32", "bf16"], default=None,
                    help="run under this precision only (repeatable; default: both fp32 and bf16, and the verdict "
                         "must agree)")
    lb.set_defaults(func=_cmd_lab)
    av = sub.add_parser("average", help="average the weights of a run's last K checkpoints (checkpoint averaging) "
                                        "into one model file, and evaluate it")
    av.add_argument("dir", help="the run directory (holds config.toml and checkpoints/)")
    av.add_argument("--last", type=int, required=True, metavar="K", help="how many of the latest checkpoints")
    av.add_argument("--out", help="the averaged weights (default RUN_DIR/model-avg-lastK.safetensors)")
    av.add_argument("--bn", choices=("average", "recompute"), default="average",
                    help="batch-norm statistics: averaged like the weights (default) or re-estimated on the "
                         "training data")
    av.add_argument("--no-eval", action="store_true", help="only write the averaged weights")
    av.set_defaults(func=_cmd_average)
    return p


def _cli_warning_format(default):
    """The library's warnings name the first caller outside traintricks: under the CLI that is the entry point
    (``bin/traintricks:8``, or runpy's line under ``python -m``), which says nothing to the user; those print as
    ``traintricks: UserWarning: message``. Warnings of other libraries keep their file and line."""
    entry = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""

    def format_warning(message, category, filename, lineno, line=None):
        if os.path.abspath(filename) == entry or os.path.basename(filename) == "runpy.py":
            return f"traintricks: {category.__name__}: {message}\n"
        return default(message, category, filename, lineno, line)
    return format_warning


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:      # as under python -m: model.name = "mymodels:Net"
        sys.path.append(os.getcwd())                           # finds mymodels.py in the current directory
    args = build_parser().parse_args(argv)
    default = warnings.formatwarning
    warnings.formatwarning = _cli_warning_format(default)
    try:
        return args.func(args)
    finally:
        warnings.formatwarning = default


if __name__ == "__main__":
    sys.exit(main())
