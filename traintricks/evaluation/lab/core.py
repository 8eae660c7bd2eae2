"""The lab's machinery: :class:`Lab` (shared settings and data), :class:`Claim`, and :func:`run_claim`, which runs
a claim's experiment once per seed and per precision and decides its verdict with a margin.

**How a verdict is decided.** A claim's experiment (``Claim.run``, one seed at a time) returns the numbers it
measured and one value per criterion (``Claim.criteria``), signed so that *positive means the claim's direction*
(a threshold the notes or the paper give is subtracted in the experiment, e.g. "BN loses > 3 pp" gives
``drop - 3``). :func:`run_claim` runs it for each seed of :meth:`Lab.seeds_for` (3 by default, more for a cheap
claim whose design needs them, ``Claim.seeds``; the training seed varies, the data split does not) under
``precision="fp32"`` and again under ``"bf16"`` (autocast), so the verdict does not depend on whether the machine
has fast bfloat16. For each criterion and precision the seeds give a mean ``m``, the standard deviation ``s``
(n - 1) and the standard error ``se = s / sqrt(n)``; the criterion

* **holds** when ``m - 2 se > 0`` (the whole interval ``m +- 2 se`` is on the claim's side),
* **fails** when ``m + 2 se < 0`` (the interval is on the other side),
* is **undecided** otherwise (the seeds disagree more than the effect is large: the experiment is too small).

Per precision the claim **HOLDS** when every criterion holds, **DOES NOT HOLD** when one fails, and is
**INCONCLUSIVE** otherwise. The claim's verdict is the precisions' common verdict; if fp32 and bf16 disagree it is
INCONCLUSIVE, with the reason. Each claim's JSON has every seed's numbers and the intervals; its plot has the
experiment's panel(s) and a panel with every seed's criterion values, their mean and the +-2 SE interval.
"""
from __future__ import annotations

import contextlib
import json
import math
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..html import pyplot, savefig


class LabError(ValueError):
    """A claim cannot run on the given ``--set`` (data of another task, a model that does not take the option the
    claim varies...); the message names the claim, the key and why."""


HOLDS, FAILS, INCONCLUSIVE = "HOLDS", "DOES NOT HOLD", "INCONCLUSIVE"
PRECISIONS = ("fp32", "bf16")
#: the interval a criterion's seeds give: mean +- Z standard errors
Z = 2.0


@dataclass
class Criterion:
    """One condition of a claim: ``text`` says what the per-seed value measures and the margin it needs (the value
    is positive on the claim's side); ``unit`` is printed after the numbers."""
    key: str
    text: str
    unit: str = ""
    fmt: str = ".3g"


@dataclass
class Claim:
    name: str
    text: str              # the claim, as the notes make it
    source: str            # where the notes/papers make it
    how: str               # the experiment
    run: Callable[["Lab"], dict[str, Any]]   # one seed: {"criteria": {key: value}, "numbers": {...}}
    criteria: Sequence[Criterion] = ()
    plot: Callable[[Any, dict[str, list[dict]]], None] | None = None   # (axes, {precision: [numbers per seed]})
    panels: int = 1                # axes the experiment's plot takes
    takes_data: bool = True        # runs on the user's data (--set data...)
    task: str | None = "classification"   # the task the data must have (None: any)
    takes_model: bool = True       # runs on the user's model (--set model...)
    varies: tuple[str, ...] = ()   # the model options the experiment varies (kept with the user's model)
    images: bool = True            # the claim's own network (used without --set model...) needs (C, H, W) inputs
    seeds: int = 3                 # the seeds its design needs (a cheap, noisy experiment runs more; Lab.seeds_for)

    def scope(self) -> str:
        """One line: what ``--set`` it takes."""
        if not self.takes_data and not self.takes_model:
            return "takes no --set (a synthetic experiment)"
        needs = ([f"{self.task} data"] if self.task else []) + (["images for its own network"] if self.images else [])
        data = "data..." + (f" ({', '.join(needs)})" if needs else "") if self.takes_data else ""
        model = ("model..." + (f" (the model must take {', '.join(self.varies)})" if self.varies else "")
                 if self.takes_model else "")
        return "takes --set " + " and ".join(x for x in (data, model) if x)

    def criterion_text(self) -> str:
        """The criteria and the rule, one line."""
        return ("; ".join(c.text for c in self.criteria) +
                f" -- each judged on mean +- {Z:g} standard errors over the seeds, under fp32 and under bf16")


# The network every claim's runs start from (the 16-32-64 CNN, each pool after its norm).
LAB_MODEL = ["model.widths=[16, 32, 64]", "model.pool_before_norm=false"]


def _key(override: str) -> str:
    return override.partition("=")[0].strip()


@dataclass
class Lab:
    """Shared settings and data for the experiments. ``sets``: the user's ``data.*`` / ``model.*`` overrides
    (``--set``), applied to every claim that takes them. ``seed``: the first training seed, ``seeds`` how many (3 by
    default, at least: a claim may need more, :meth:`seeds_for`; the data split always uses ``seed``);
    ``precisions``: each claim runs under each of them."""
    out: Path
    quick: bool = False
    root: str = ""
    seed: int = 0
    sets: Sequence[str] = ()
    seeds: int = 3
    precisions: Sequence[str] = PRECISIONS
    _data: dict = field(default_factory=dict)
    claim: "Claim | None" = None            # the claim running now (run_claim sets it)
    run_seed: int = 0                       # the seed of the run now (run_claim sets it)
    precision: str = "fp32"                 # the precision of the run now (run_claim sets it)

    def __post_init__(self) -> None:
        from ...config import ConfigError
        bad = [s for s in self.sets if not _key(s).startswith(("data.", "model."))]
        if bad:
            raise ConfigError(_key(bad[0]), "lab --set takes data.* and model.* keys (the claims' experiments set "
                                            "the rest: rates, epochs, batch sizes)")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ValueError(f"precisions must be among {PRECISIONS}, got {list(self.precisions)}")
        self.run_seed = self.seed

    @property
    def user_data(self) -> list[str]:
        return [s for s in self.sets if _key(s).startswith("data.")] if self._takes("data") else []

    @property
    def user_model(self) -> list[str]:
        return [s for s in self.sets if _key(s).startswith("model.")] if self._takes("model") else []

    def _takes(self, what: str) -> bool:
        return self.claim is None or (self.claim.takes_data if what == "data" else self.claim.takes_model)

    @property
    def dataset(self) -> str:
        """The ``data.name`` the claims run on: the user's (``--set data.name=...``), else Fashion-MNIST (digits
        with ``--quick``)."""
        names = [s.partition("=")[2].strip().strip("'\"") for s in self.sets if _key(s) == "data.name"]
        if names and self._takes("data"):
            return names[-1]
        return "digits" if self.quick else "fashion_mnist"

    def seeds_for(self, claim: Claim) -> list[int]:
        """The training seeds ``claim`` runs over: ``seed, seed + 1, ...``, as many as ``seeds`` (``--seeds``) or the
        claim's own count (``Claim.seeds``: a cheap experiment whose seeds disagree runs more), the larger; with
        ``quick`` (the plumbing check) exactly ``seeds``."""
        n = self.seeds if self.quick else max(self.seeds, claim.seeds)
        return [self.seed + i for i in range(n)]

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def autocast(self):
        """The context a claim's own loop runs forward passes in: bf16 autocast under ``precision="bf16"``."""
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generator(self, salt: int = 0) -> torch.Generator:
        """A generator seeded with the run's seed (and ``salt``); also seeds torch's global generator."""
        torch.manual_seed(self.run_seed * 1000 + salt)
        return torch.Generator().manual_seed(self.run_seed * 1000 + salt)

    def config(self, overrides: Sequence[str] = (), limit: int | None = None, val_size: float | None = None):
        """The config of one of the claim's runs: the lab's base, the user's ``--set``, then the claim's
        ``overrides`` (with the user's model: only those it varies, not its own network's options), then the run's
        seed and precision."""
        from ...config import ConfigError, load_config
        mine = bool(self.user_model)
        varies = self.claim.varies if self.claim else ()
        keep = [o for o in [*LAB_MODEL, *overrides]
                if not (mine and _key(o).startswith("model.") and _key(o) not in varies)]
        sizes = []
        if limit is not None and not any(_key(s) == "data.limit" for s in self.user_data):
            sizes.append(f"data.limit={limit}")
        if val_size is not None:
            sizes.append(f"data.val_size={val_size}")
        base = [f"data.name={'digits' if self.quick else 'fashion_mnist'}",
                *([f"data.root={self.root}"] if self.root else []), "callbacks=[]", "data.augment=[]",
                "test_every_epoch=false", "schedule.name=onecycle"]
        try:
            return load_config(overrides=[*base, *sizes, *self.user_data, *self.user_model, *keep,
                                          f"seed={self.run_seed}", f"precision={self.precision}"])
        except ConfigError as e:
            if mine and e.key in varies:
                raise LabError(f"claim {self.claim.name}: it varies {e.key}, which the model given with --set "
                               f"model.name does not take ({e}); run it on a model with that option") from None
            raise

    def data(self, limit: int, val_size: float = 0.1, test: int = 5000):
        """The claim's data (cached): the first ``limit`` training examples (all of digits with ``--quick``) and, of
        the bundled sets, the first ``test`` test examples."""
        from ...training.recipe import build_data
        key = (limit, val_size, test)
        if key not in self._data:
            if not self.user_data:           # the bundled sets: all of digits for --quick (limit 0)
                from ...data import load_data
                d = load_data(self.dataset, root=self.root, limit=0 if self.quick else limit,
                              val_size=val_size, seed=self.seed)
                if test and len(d.test_x) > test:
                    d = replace(d, test_x=d.test_x[:test], test_y=d.test_y[:test])
                self._data[key] = d
            else:
                self._data[key] = build_data(self.config(limit=limit, val_size=val_size))
        self._check(self._data[key])
        return self._data[key]

    def _check(self, data) -> None:
        """Refuse data the claim cannot judge (another task; non-images for the claim's own CNN)."""
        from ..tasks import resolve_task
        c = self.claim
        if c is None:
            return
        task = resolve_task("auto", data)
        if c.task and task != c.task:
            raise LabError(f"claim {c.name}: it is judged on {c.task} (test accuracy / cross-entropy), but "
                           f"data.name={data.name!r} is a {task} task")
        if c.images and not self.user_model and len(data.input_shape) != 3:
            raise LabError(f"claim {c.name}: its own network is the lab's CNN, which takes images (C, H, W); "
                           f"data.name={data.name!r} gives inputs of shape {tuple(data.input_shape)}: give a model "
                           f"for them with --set model.name=pkg.module:factory")

    def train(self, overrides: list[str], limit: int, val_size: float = 0.1, test: int = 5000
              ) -> tuple[Any, dict | None]:
        """Train in this process; returns (trainer, summary), summary None when the run diverged."""
        from ...training import NonFiniteLossError, build_trainer
        cfg = self.config(overrides, limit, val_size)
        trainer = build_trainer(cfg, data=self.data(limit, val_size, test), progress=False)
        try:
            return trainer, trainer.fit()
        except NonFiniteLossError:
            return trainer, None


def fig_axes(plt, ncols=1, w=5.0, h=3.8):
    fig, axes = plt.subplots(1, ncols, figsize=(w * ncols, h), squeeze=False)
    return fig, list(axes[0])


# ------------------------------------------------------------------------------------------------ verdicts
def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation (n - 1), standard error, range and the ``mean +- Z se`` interval of the seeds'
    values, and the criterion's status (``holds`` / ``fails`` / ``undecided``). A non-finite value (a diverged
    run the experiment did not map to a number) makes the criterion undecided."""
    v = [float(x) for x in values]
    n = len(v)
    if not all(math.isfinite(x) for x in v):
        return {"values": v, "n": n, "mean": None, "sd": None, "se": None, "min": None, "max": None,
                "low": None, "high": None, "status": "undecided"}
    m = sum(v) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    se = sd / math.sqrt(n)
    lo, hi = m - Z * se, m + Z * se
    # one seed has no spread to judge by: undecided unless the margin is met... which one seed cannot show
    status = "undecided" if n < 2 else "holds" if lo > 0 else "fails" if hi < 0 else "undecided"
    return {"values": v, "n": n, "mean": m, "sd": sd, "se": se, "min": min(v), "max": max(v), "low": lo,
            "high": hi, "status": status}


def decide(stats: dict[str, dict]) -> str:
    """A precision's verdict from its criteria's intervals."""
    statuses = [s["status"] for s in stats.values()]
    if statuses and all(s == "holds" for s in statuses):
        return HOLDS
    if any(s == "fails" for s in statuses):
        return FAILS
    return INCONCLUSIVE


def combine(verdicts: dict[str, str]) -> tuple[str, str]:
    """The claim's verdict from its precisions' and the reason."""
    distinct = sorted(set(verdicts.values()))
    if len(distinct) == 1:
        v = distinct[0]
        why = {HOLDS: "every criterion's interval is on the claim's side",
               FAILS: "a criterion's interval is on the other side",
               INCONCLUSIVE: "a criterion's interval contains 0: the seeds' spread is larger than the effect"}[v]
        return v, f"{why} under {' and '.join(verdicts)}"
    return INCONCLUSIVE, "the precisions disagree: " + ", ".join(f"{p} {v}" for p, v in verdicts.items())


def _fmt(x: float | None, f: str) -> str:
    return "n/a" if x is None else format(x, f)


def summarize(claim: Claim, stats: dict[str, dict[str, dict]]) -> str:
    parts = []
    for c in claim.criteria:
        per = []
        for p, st in stats.items():
            s = st[c.key]
            per.append(f"{p} {_fmt(s['mean'], c.fmt)}{c.unit} [{_fmt(s['low'], c.fmt)}, {_fmt(s['high'], c.fmt)}] "
                       f"(seeds " + ", ".join(format(v, c.fmt) for v in s["values"]) + ")")
        parts.append(f"{c.text}: " + "; ".join(per))
    return " | ".join(parts)


def _verdict_panel(ax, claim: Claim, stats: dict[str, dict[str, dict]]) -> None:
    """Every seed's criterion values (dots), their mean (bar) and the +-2 SE interval, per precision; the claim's
    side is above 0. Values are scaled by each criterion's largest |value| so criteria share one axis."""
    marks = {"fp32": ("o", "C0"), "bf16": ("^", "C1")}
    for i, c in enumerate(claim.criteria):
        scale = max([abs(v) for st in stats.values() for v in st[c.key]["values"] if math.isfinite(v)] +
                    [abs(st[c.key][k]) for st in stats.values() for k in ("low", "high") if st[c.key][k] is not None]
                    + [1e-12])
        for j, (p, st) in enumerate(stats.items()):
            s = st[c.key]
            x = i + (j - 0.5) * 0.3
            mk, col = marks.get(p, ("s", f"C{j + 2}"))
            ax.scatter([x] * len(s["values"]), [v / scale for v in s["values"]], marker=mk, color=col, s=18,
                       label=p if i == 0 else None, zorder=3)
            if s["mean"] is not None:
                ax.errorbar([x], [s["mean"] / scale], yerr=[[(s["mean"] - s["low"]) / scale],
                                                           [(s["high"] - s["mean"]) / scale]],
                            fmt="_", color="k", capsize=4, ms=14, zorder=2)
    ax.axhline(0, color="gray", lw=1)
    ax.set_xticks(range(len(claim.criteria)),
                  [textwrap.fill(c.text, 26) for c in claim.criteria], fontsize=6)
    ax.set_ylabel("criterion value / its largest |value|\n(> 0: the claim's side)", fontsize=7)
    ax.set_title(f"seeds (dots), mean +- {Z:g} SE", fontsize=8)
    ax.legend(fontsize=7)


def run(claim: Claim, lab: Lab) -> dict[str, Any]:
    """Run a claim's experiment for every seed and precision; write ``NAME.png`` and ``NAME.json`` under
    ``lab.out``; return the verdict (a dict: ``verdict``, ``holds``, ``summary``, ``precisions``...)."""
    name = claim.name
    lab.out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    seeds = lab.seeds_for(claim)
    runs: dict[str, list[dict]] = {}
    lab.claim = claim
    try:
        for p in lab.precisions:
            runs[p] = []
            for s in seeds:
                lab.precision, lab.run_seed = p, s
                r = claim.run(lab)
                missing = [c.key for c in claim.criteria if c.key not in r["criteria"]]
                if missing:
                    raise RuntimeError(f"claim {name}: the experiment gave no value for {missing}")
                runs[p].append({"seed": s, "criteria": {k: float(v) for k, v in r["criteria"].items()},
                                "numbers": r.get("numbers", {})})
    finally:
        lab.claim, lab.precision, lab.run_seed = None, "fp32", lab.seed
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = {p: {c.key: interval([r["criteria"][c.key] for r in rs]) for c in claim.criteria}
             for p, rs in runs.items()}
    verdicts = {p: decide(st) for p, st in stats.items()}
    verdict, reason = combine(verdicts)
    summary = summarize(claim, stats)
    plt = pyplot()
    fig, axes = fig_axes(plt, claim.panels + 1)
    if claim.plot is not None:
        claim.plot(axes[:-1] if claim.panels > 1 else axes[0], {p: [r["numbers"] for r in rs] for p, rs in runs.items()})
    _verdict_panel(axes[-1], claim, stats)
    w, h = fig.get_size_inches()
    lines = [f"{claim.text}  Verdict: {verdict} ({reason})."]
    lines += textwrap.wrap(f"{len(seeds)} seeds x {'/'.join(lab.precisions)}. " + summary, width=int(w * 17))
    fig.suptitle("\n".join(lines), fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.13 * len(lines) + 0.08) / h))
    png = savefig(fig, lab.out / f"{name}.png")
    result = {"claim": name, "text": claim.text, "source": claim.source, "experiment": claim.how,
              "criterion": claim.criterion_text(), "verdict": verdict, "reason": reason,
              "holds": verdict == HOLDS, "summary": summary, "seeds": seeds,
              "precisions": {p: {"verdict": verdicts[p],
                                 "criteria": {c.key: {"text": c.text, **stats[p][c.key]} for c in claim.criteria},
                                 "runs": runs[p]} for p in runs},
              "seconds": seconds, "cpu_seconds": cpu, "quick": lab.quick,
              "dataset": lab.dataset if claim.takes_data else None, "plot": str(png),
              "sets": [x for x in lab.sets if (_key(x).startswith("data.") and claim.takes_data)
                       or (_key(x).startswith("model.") and claim.takes_model)]}
    from ...training.checkpoint import atomic_write_json
    atomic_write_json(lab.out / f"{name}.json", json.loads(json.dumps(result, default=_plain)))
    return result


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return str(v)


# ------------------------------------------------------------------------------------------------ plot helpers
def seed_lines(ax, xs, per_seed: dict[str, list[list[float]]], scale: float = 1.0, **kw) -> None:
    """Thin lines for each seed and a thick line for the mean, per label (``{label: [values per seed]}``)."""
    for i, (label, ys) in enumerate(per_seed.items()):
        col = f"C{i}"
        for y in ys:
            ax.plot(xs, [scale * v for v in y], color=col, lw=0.7, alpha=0.45, **kw)
        mean = [scale * sum(c) / len(c) for c in zip(*ys)]
        ax.plot(xs, mean, "o-", color=col, lw=2, label=label, ms=3, **kw)
