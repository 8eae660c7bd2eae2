"""The notes' testable claims, each as a small seeded experiment (``traintricks lab``).

``traintricks lab`` lists the claims; ``traintricks lab CLAIM [CLAIM ...] [--out DIR]`` (or ``all``) runs them on
Fashion-MNIST subsets (about a minute each on 2 CPU cores), prints each verdict with its numbers, and writes
``DIR/CLAIM.png`` and ``DIR/CLAIM.json``. The verdict states whether the claim held *in this experiment*, with the
criterion it was judged by; a claim that does not hold at this scale is reported as such, not hidden. ``--quick``
runs tiny versions on the bundled ``digits`` set (for tests: the plumbing, not the verdicts).

**Your data and model.** ``--set data.KEY=VALUE`` runs the claims on your data (any ``data.*`` key, as for
``traintricks train``: ``data.name=folder``, ``data.root``...) and ``--set model.KEY=VALUE`` on your model
(``model.name=pkg.module:factory`` and its options), where the claim makes sense there; each :class:`Claim` says
what it takes (``takes_data``, ``task``, ``takes_model``, ``varies``):

* a claim judged by test accuracy or cross-entropy needs classification data (others are refused, naming the task);
* with your model, the claim's own architecture options (the lab CNN's widths, the MLP's hidden sizes...) are
  dropped; the model options it *varies* (``model.norm`` for the normalization claims) are kept and applied to
  any model by :mod:`traintricks.surgery` (``convert_norms``); a model they cannot apply to (no norm layers) is
  refused, naming the option;
* without your model, the claim's own network is used: the lab CNN needs images ``(C, H, W)``;
* ``checkpointing`` measures a synthetic MLP on random inputs and takes neither (it says so and runs as usual).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .html import pyplot, savefig


class LabError(ValueError):
    """A claim cannot run on the given ``--set`` (data of another task, a model that does not take the option the
    claim varies...); the message names the claim, the key and why."""


@dataclass
class Claim:
    name: str
    text: str              # the claim, as the notes make it
    source: str            # where the notes/papers make it
    how: str               # the experiment and its criterion
    run: Callable[["Lab"], dict[str, Any]]
    takes_data: bool = True        # runs on the user's data (--set data...)
    task: str | None = "classification"   # the task the data must have (None: any)
    takes_model: bool = True       # runs on the user's model (--set model...)
    varies: tuple[str, ...] = ()   # the model options the experiment varies (kept with the user's model)
    images: bool = True            # the claim's own network (used without --set model...) needs (C, H, W) inputs

    def scope(self) -> str:
        """One line: what ``--set`` it takes."""
        if not self.takes_data and not self.takes_model:
            return "takes no --set (a synthetic experiment)"
        needs = ([f"{self.task} data"] if self.task else []) + (["images for its own network"] if self.images else [])
        data = "data..." + (f" ({', '.join(needs)})" if needs else "") if self.takes_data else ""
        model = ("model..." + (f" (the model must take {', '.join(self.varies)})" if self.varies else "")
                 if self.takes_model else "")
        return "takes --set " + " and ".join(x for x in (data, model) if x)


# The network every claim's runs start from (the 16-32-64 CNN, each pool after its norm): the one the recorded
# results in docs/lab were measured with, kept when the default recipe's model changes.
LAB_MODEL = ["model.widths=[16, 32, 64]", "model.pool_before_norm=false"]


def _key(override: str) -> str:
    return override.partition("=")[0].strip()


@dataclass
class Lab:
    """Shared settings and data for the experiments. ``sets``: the user's ``data.*`` / ``model.*`` overrides
    (``--set``), applied to every claim that takes them (see the module docstring)."""
    out: Path
    quick: bool = False
    root: str = ""
    seed: int = 0
    sets: Sequence[str] = ()
    _data: dict = field(default_factory=dict)
    claim: "Claim | None" = None            # the claim running now (run_claim sets it)

    def __post_init__(self) -> None:
        from ..config import ConfigError
        bad = [s for s in self.sets if not _key(s).startswith(("data.", "model."))]
        if bad:
            raise ConfigError(_key(bad[0]), "lab --set takes data.* and model.* keys (the claims' experiments set "
                                            "the rest: rates, epochs, batch sizes)")

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

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def config(self, overrides: Sequence[str] = (), limit: int | None = None, val_size: float | None = None):
        """The config of one of the claim's runs: the lab's base, the user's ``--set``, then the claim's
        ``overrides`` (with the user's model: only those it varies, not its own network's options)."""
        from ..config import ConfigError, load_config
        mine = bool(self.user_model)
        varies = self.claim.varies if self.claim else ()
        keep = [o for o in [*LAB_MODEL, *overrides]
                if not (mine and _key(o).startswith("model.") and _key(o) not in varies)]
        sizes = []
        if limit is not None and not any(_key(s) == "data.limit" for s in self.user_data):
            sizes.append(f"data.limit={limit}")
        if val_size is not None:
            sizes.append(f"data.val_size={val_size}")
        base = [f"data.name={'digits' if self.quick else 'fashion_mnist'}", *([f"data.root={self.root}"] if self.root else []), "callbacks=[]",
                "data.augment=[]", f"seed={self.seed}", "test_every_epoch=false", "schedule.name=onecycle"]
        try:
            return load_config(overrides=[*base, *sizes, *self.user_data, *self.user_model, *keep])
        except ConfigError as e:
            if mine and e.key in varies:
                raise LabError(f"claim {self.claim.name}: it varies {e.key}, which the model given with --set "
                               f"model.name does not take ({e}); run it on a model with that option") from None
            raise

    def data(self, limit: int, val_size: float = 0.1):
        from ..training.recipe import build_data
        key = (limit, val_size)
        if key not in self._data:
            if not self.user_data:           # the bundled sets: all of digits for --quick (limit 0)
                from ..data import load_data
                self._data[key] = load_data(self.dataset, root=self.root, limit=0 if self.quick else limit,
                                            val_size=val_size, seed=self.seed)
            else:
                self._data[key] = build_data(self.config(limit=limit, val_size=val_size))
        self._check(self._data[key])
        return self._data[key]

    def _check(self, data) -> None:
        """Refuse data the claim cannot judge (another task; non-images for the claim's own CNN)."""
        from .tasks import resolve_task
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

    def train(self, overrides: list[str], limit: int, val_size: float = 0.1) -> tuple[Any, dict | None]:
        """Train in this process; returns (trainer, summary), summary None when the run diverged."""
        from ..training import NonFiniteLossError, build_trainer
        cfg = self.config(overrides, limit, val_size)
        trainer = build_trainer(cfg, data=self.data(limit, val_size), progress=False)
        try:
            return trainer, trainer.fit()
        except NonFiniteLossError:
            return trainer, None


def _fig(plt, ncols=1, w=5.5, h=3.8):
    return plt.subplots(1, ncols, figsize=(w * ncols, h))


# ------------------------------------------------------------------------------------------------ claims
def bn_higher_lr(lab: Lab) -> dict[str, Any]:
    lrs = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    acc: dict[str, list[float]] = {"batchnorm": [], "none": []}
    for norm in acc:
        for lr in lrs:
            _, s = lab.train([f"model.norm={norm}", f"lr={lr}", "batch_size=128", f"epochs={lab.n(3, 1)}",
                              "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]", "precision=fp32"],
                             lab.n(6000, 0))
            acc[norm].append(s["test_accuracy"] if s else 0.0)
    bar = 0.9 * max(max(v) for v in acc.values())
    # the largest rate at which each network reaches 90% of the best accuracy either reached (0: never)
    usable = {k: max((lr for lr, a in zip(lrs, v) if a >= bar), default=0.0) for k, v in acc.items()}
    holds = usable["batchnorm"] > usable["none"]
    plt = pyplot()
    fig, ax = _fig(plt)
    for k, v in acc.items():
        ax.semilogx(lrs, [100 * a for a in v], "o-", label=k)
    ax.set_xlabel("peak learning rate (one-cycle)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    return {"holds": holds, "fig": fig, "numbers": {"lrs": lrs, "accuracy": acc, "largest_usable_lr": usable},
            "summary": f"largest peak rate reaching {100 * bar:.1f}% (90% of the best run): batch norm "
                       f"{usable['batchnorm']:g}, none {usable['none']:g} (0 = never); best accuracy BN "
                       f"{100 * max(acc['batchnorm']):.1f}%, none {100 * max(acc['none']):.1f}%"}


def bn_small_batch(lab: Lab) -> dict[str, Any]:
    batches = [2, 64] if not lab.quick else [4, 64]
    norms = ["batchnorm", "groupnorm", "batchrenorm"]
    acc = {n: [] for n in norms}
    for norm in norms:
        for bs in batches:
            _, s = lab.train(["model.name=mlp", "model.hidden=[256, 256]", f"model.norm={norm}", "model.norm_groups=8",
                              f"lr={0.1 * bs / 64:.6g}", f"batch_size={bs}", f"epochs={lab.n(2, 1)}"], lab.n(4000, 0))
            acc[norm].append(s["test_accuracy"] if s else 0.0)
    drop = {n: 100 * (v[-1] - v[0]) for n, v in acc.items()}
    holds = drop["batchnorm"] > 3.0 and drop["groupnorm"] < drop["batchnorm"] / 2 and \
        drop["batchrenorm"] < drop["batchnorm"]
    plt = pyplot()
    fig, ax = _fig(plt)
    w = 0.25
    for i, n in enumerate(norms):
        ax.bar([j + (i - 1) * w for j in range(len(batches))], [100 * a for a in acc[n]], w, label=n)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, 100 * min(min(v) for v in acc.values()) - 10), 100)
    ax.legend()
    return {"holds": holds, "fig": fig, "numbers": {"batch_sizes": batches, "accuracy": acc, "drop_pp": drop},
            "summary": "accuracy lost going from batch 64 to batch " + str(batches[0]) + ": " +
                       ", ".join(f"{n} {d:.1f} pp" for n, d in drop.items()) +
                       " (criterion: BN loses > 3 pp, GN less than half of that, batch renorm less than BN)"}


def gn_train_eval(lab: Lab) -> dict[str, Any]:
    res = {}
    for norm in ("groupnorm", "batchnorm"):
        trainer, s = lab.train([f"model.norm={norm}", "model.norm_groups=8", "lr=0.1", "batch_size=128",
                                f"epochs={lab.n(1, 1)}", "model.widths=[16, 32, 64]"], lab.n(4000, 0))
        model = trainer.model
        x = trainer.test_loader.x[:256]
        with torch.no_grad():
            model.eval()
            ev = model(x).float()
            model.train()
            tr_full = model(x).float()                     # train mode, a batch of 256
            tr_small = torch.cat([model(x[i:i + 2]).float() for i in range(0, 32, 2)])   # train mode, batches of 2
            model.eval()
        res[norm] = {"max_diff_train_vs_eval_batch256": (tr_full - ev).abs().max().item(),
                     "max_diff_train_vs_eval_batch2": (tr_small - ev[:32]).abs().max().item(),
                     "agreement_batch2": (tr_small.argmax(1) == ev[:32].argmax(1)).float().mean().item()}
    holds = res["groupnorm"]["max_diff_train_vs_eval_batch2"] < 1e-4 and \
        res["batchnorm"]["max_diff_train_vs_eval_batch2"] > 1e-2
    plt = pyplot()
    fig, ax = _fig(plt)
    keys = ["max_diff_train_vs_eval_batch256", "max_diff_train_vs_eval_batch2"]
    for i, norm in enumerate(res):
        ax.bar([j + 0.35 * i for j in range(2)], [max(res[norm][k], 1e-9) for k in keys], 0.35, label=norm)
    ax.set_yscale("log")
    ax.set_xticks([0.17, 1.17], ["train-mode batch 256", "train-mode batches of 2"])
    ax.set_ylabel("max |logit(train mode) - logit(eval mode)|")
    ax.legend()
    return {"holds": holds, "fig": fig, "numbers": res,
            "summary": f"max logit difference train vs inference mode on batches of 2: group norm "
                       f"{res['groupnorm']['max_diff_train_vs_eval_batch2']:.1e}, batch norm "
                       f"{res['batchnorm']['max_diff_train_vs_eval_batch2']:.2f} (predictions agree "
                       f"{100 * res['batchnorm']['agreement_batch2']:.0f}%)"}


def checkpointing(lab: Lab) -> dict[str, Any]:
    from ..memory import checkpoint_sequential
    from ..memory.measure import saved_bytes
    torch.manual_seed(lab.seed)
    depth, width, batch = lab.n(16, 4), lab.n(1024, 128), lab.n(256, 32)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers)
    x = torch.randn(batch, width, requires_grad=True)
    rows = []
    for segments in [0, 2, 4, 8, 16] if not lab.quick else [0, 2]:
        run = (lambda: net(x)) if segments == 0 else (lambda s=segments: checkpoint_sequential(net, s, x))
        b = saved_bytes(run, exclude=net)
        times = []
        for _ in range(lab.n(5, 1)):
            net.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            run().square().mean().backward()
            times.append(time.perf_counter() - t0)
        rows.append({"segments": segments, "saved_mb": b / 2 ** 20, "step_ms": 1000 * sorted(times)[len(times) // 2]})
    base = rows[0]
    for r in rows:
        r["memory_ratio"], r["time_ratio"] = r["saved_mb"] / base["saved_mb"], r["step_ms"] / base["step_ms"]
    best = min(rows[1:], key=lambda r: r["memory_ratio"])
    holds = best["memory_ratio"] < 0.5 and best["time_ratio"] > 1.0
    plt = pyplot()
    fig, ax = _fig(plt)
    ax.plot([r["memory_ratio"] for r in rows], [r["time_ratio"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"{r['segments'] or 'none'}", (r["memory_ratio"], r["time_ratio"]))
    ax.set_xlabel("activation memory saved for backward (x plain)")
    ax.set_ylabel("forward+backward time (x plain)")
    ax.grid(alpha=0.3)
    return {"holds": holds, "fig": fig, "numbers": rows,
            "summary": f"{depth}-layer MLP: with {best['segments']} segments {best['memory_ratio']:.2f}x the memory "
                       f"for {best['time_ratio']:.2f}x the time (plain {base['saved_mb']:.0f} MB, {base['step_ms']:.0f} ms)"}


def batch_memory_noise(lab: Lab) -> dict[str, Any]:
    from ..memory.measure import saved_bytes
    from ..training.recipe import build_model
    data = lab.data(lab.n(10000, 0))
    cfg = lab.config()
    torch.manual_seed(lab.seed)
    model = build_model(cfg, data.input_shape, data.num_classes)
    model.eval()                    # fixed statistics: the gradient is a plain mean over examples
    loss_fn = torch.nn.CrossEntropyLoss()
    params = [p for p in model.parameters()]
    x, y = data.train_x, data.train_y
    n = min(len(x), lab.n(4096, 512))

    def grad(idx):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        return torch.cat([p.grad.flatten() for p in params])
    full = sum(grad(torch.arange(i, min(i + 512, n))) * (min(i + 512, n) - i) for i in range(0, n, 512)) / n
    g = torch.Generator().manual_seed(lab.seed)
    rows = []
    for b in [16, 64, 256]:
        xb = x[:b].clone()          # a view of x[:b] would count the whole dataset's storage as saved
        mem = saved_bytes(lambda: loss_fn(model(xb), y[:b]), exclude=model)
        devs = [(grad(torch.randperm(n, generator=g)[:b]) - full).pow(2).sum().item() for _ in range(lab.n(20, 3))]
        rows.append({"batch_size": b, "saved_mb": mem / 2 ** 20, "grad_noise": sum(devs) / len(devs)})
    for r in rows:
        r["noise_x_batch"] = r["grad_noise"] * r["batch_size"]
    mono_mem = all(a["saved_mb"] < b["saved_mb"] for a, b in zip(rows, rows[1:]))
    mono_noise = all(a["grad_noise"] > b["grad_noise"] for a, b in zip(rows, rows[1:]))
    holds = mono_mem and mono_noise
    plt = pyplot()
    fig, axes = _fig(plt, 2, 4.5)
    bs = [r["batch_size"] for r in rows]
    axes[0].loglog(bs, [r["saved_mb"] for r in rows], "o-")
    axes[0].set_xlabel("batch size")
    axes[0].set_ylabel("activation memory for backward (MB)")
    axes[1].loglog(bs, [r["grad_noise"] for r in rows], "o-", label="measured")
    axes[1].loglog(bs, [rows[0]["grad_noise"] * bs[0] / b for b in bs], "--", label="1 / B")
    axes[1].set_xlabel("batch size")
    axes[1].set_ylabel("E ||g_B - g||^2")
    axes[1].legend()
    return {"holds": holds, "fig": fig, "numbers": rows,
            "summary": "memory " + " / ".join(f"{r['saved_mb']:.1f}" for r in rows) + " MB and gradient noise "
                       + " / ".join(f"{r['grad_noise']:.3g}" for r in rows) + " at batch 16 / 64 / 256 "
                       "(noise x batch: " + " / ".join(f"{r['noise_x_batch']:.3g}" for r in rows) + ", ~constant "
                       "as the 1/B law says)"}


def label_smoothing_calibration(lab: Lab) -> dict[str, Any]:
    from .metrics import expected_calibration_error, reliability
    res = {}
    rel = {}
    for eps in (0.0, 0.05, 0.1):
        trainer, s = lab.train([f"loss.label_smoothing={eps}", "optim.weight_decay=0.0", "lr=0.1", "batch_size=128",
                                f"epochs={lab.n(25, 2)}", "data.val_size=0", "model.widths=[16, 32, 64]",
                                "precision=fp32"], lab.n(2000, 0), val_size=0)
        with torch.no_grad():
            trainer.model.eval()
            x = trainer.test_loader.x
            probs = torch.cat([torch.softmax(trainer.model(x[i:i + 1000]).float(), 1) for i in range(0, len(x), 1000)])
        y = trainer.test_loader.y
        res[eps] = {"ece": expected_calibration_error(probs, y), "accuracy": (probs.argmax(1) == y).float().mean().item(),
                    "mean_confidence": probs.max(1).values.mean().item()}
        rel[eps] = reliability(probs, y, 10)
    best = min((e for e in res if e > 0), key=lambda e: res[e]["ece"])
    holds = res[best]["ece"] < res[0.0]["ece"]
    plt = pyplot()
    fig, ax = _fig(plt)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for eps, r in rel.items():
        m = r["count"] > 0
        ax.plot(r["confidence"][m].numpy(), r["accuracy"][m].numpy(), "o-",
                label=f"smoothing {eps:g}: ECE {100 * res[eps]['ece']:.1f}%")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return {"holds": holds, "fig": fig, "numbers": {str(k): v for k, v in res.items()},
            "summary": "ECE " + ", ".join(f"smoothing {e:g}: {100 * r['ece']:.2f}% (conf {100 * r['mean_confidence']:.1f}%"
                                          f" / acc {100 * r['accuracy']:.1f}%)" for e, r in res.items())}


def early_stopping(lab: Lab) -> dict[str, Any]:
    epochs = lab.n(30, 3)
    trainer, s = lab.train(["loss.label_smoothing=0.0", "optim.weight_decay=0.0", "lr=0.05", "schedule.name=constant",
                            "batch_size=64", f"epochs={epochs}", "model.widths=[16, 32, 64]",
                            "early_stopping.name=patience", f"early_stopping.patience={epochs}",
                            "test_every_epoch=true", "data.val_size=500" if not lab.quick else "data.val_size=0.1"],
                           lab.n(1500, 0), val_size=500 if not lab.quick else 0.1)
    h = trainer.history
    best = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    # what each rule would have done on this run: the epoch it stops at and the test numbers of the weights kept
    from .early_stopping import EARLY_STOPPING
    rules = {"patience 5": EARLY_STOPPING.get("patience")(patience=5), "GL_5": EARLY_STOPPING.get("gl")(alpha=5.0),
             "UP_2 (strips of 3)": EARLY_STOPPING.get("up")(s=2, strip=3)}
    stops = {}
    for name, rule in rules.items():
        stop = next((r["epoch"] for r in h if rule.update(r["epoch"], r)), h[-1]["epoch"])
        kept = rule.best_epoch
        stops[name] = {"stop_epoch": stop, "kept_epoch": kept, "test_accuracy": h[kept - 1]["test_accuracy"],
                       "test_loss": h[kept - 1]["test_loss"]}
    final = {"test_accuracy": h[-1]["test_accuracy"], "test_loss": h[-1]["test_loss"]}
    holds = h[best]["test_loss"] < final["test_loss"] and all(v["test_loss"] < final["test_loss"] for v in stops.values())
    plt = pyplot()
    fig, ax = _fig(plt, 2, 4.8)
    ep = [r["epoch"] for r in h]
    ax[0].plot(ep, [r["train_loss"] for r in h], label="train")
    ax[0].plot(ep, [r["val_loss"] for r in h], label="validation")
    ax[0].plot(ep, [r["test_loss"] for r in h], label="test")
    for name, v in stops.items():
        ax[0].axvline(v["stop_epoch"], ls=":", c="gray")
        ax[0].annotate(name, (v["stop_epoch"], 0.9 * max(r["val_loss"] for r in h)), rotation=90, fontsize=7, va="top")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[1].plot(ep, [100 * r["test_accuracy"] for r in h])
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("test accuracy (%)")
    return {"holds": holds, "fig": fig, "numbers": {"best_val_epoch": best + 1, "final": final, "rules": stops},
            "summary": f"validation loss is lowest at epoch {best + 1} of {len(h)}; test loss there "
                       f"{h[best]['test_loss']:.3f} vs {final['test_loss']:.3f} at the end; the rules stop at "
                       + ", ".join(f"{n}: epoch {v['stop_epoch']} (test {100 * v['test_accuracy']:.1f}%, loss "
                                   f"{v['test_loss']:.3f})" for n, v in stops.items())
                       + f"; training to the end: {100 * final['test_accuracy']:.1f}%"}


def onecycle(lab: Lab) -> dict[str, Any]:
    epochs = lab.n(3, 1)
    base = ["batch_size=128", f"epochs={epochs}", "model.widths=[16, 32, 64]", "test_every_epoch=true"]
    runs = {}
    for lr in (0.02, 0.1):
        runs[f"constant {lr:g}"] = lab.train(base + ["schedule.name=constant", f"lr={lr}"], lab.n(10000, 0))[0]
    runs["one-cycle, peak 0.3"] = lab.train(base + ["schedule.name=onecycle", "lr=0.3"], lab.n(10000, 0))[0]
    curves = {k: [r["test_accuracy"] for r in t.history] for k, t in runs.items()}
    final = {k: v[-1] for k, v in curves.items()}
    best_const = max(v for k, v in final.items() if k.startswith("constant"))
    holds = final["one-cycle, peak 0.3"] > best_const
    plt = pyplot()
    fig, ax = _fig(plt)
    for k, v in curves.items():
        ax.plot(range(1, len(v) + 1), [100 * a for a in v], "o-", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    return {"holds": holds, "fig": fig, "numbers": {"curves": curves},
            "summary": f"after {epochs} epochs: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in final.items())}


def clipping(lab: Lab) -> dict[str, Any]:
    res = {}
    for clip in (False, True):
        extra = ['grad_transforms=[{name = "clip_norm", max_norm = 1.0}]'] if clip else []
        trainer, s = lab.train(["model.norm=none", "lr=0.5", "batch_size=128", f"epochs={lab.n(2, 1)}",
                                "model.widths=[16, 32, 64]", "precision=fp32", *extra], lab.n(6000, 0))
        res["clip_norm 1.0" if clip else "no clipping"] = {
            "diverged": s is None, "test_accuracy": s["test_accuracy"] if s else None,
            "grad_norm_max": max((r.get("grad_norm_max", 0) for r in trainer.history), default=None)}
    chance = 1.5 / lab.data(lab.n(6000, 0)).num_classes      # 1.5 x chance level: collapsed
    failed = {k: v["diverged"] or v["test_accuracy"] <= chance for k, v in res.items()}
    holds = failed["no clipping"] and not failed["clip_norm 1.0"] and res["clip_norm 1.0"]["test_accuracy"] > 0.5
    plt = pyplot()
    fig, ax = _fig(plt)
    labels = list(res)
    ax.bar(range(2), [100 * (v["test_accuracy"] or 0) for v in res.values()], color=["C3", "C2"])
    for i, v in enumerate(res.values()):
        ax.text(i, 2, "diverged (NaN)" if v["diverged"] else f"{100 * v['test_accuracy']:.1f}%", ha="center")
    ax.set_xticks(range(2), labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("no normalization, one-cycle peak lr 0.5")
    return {"holds": holds, "fig": fig, "numbers": res,
            "summary": ", ".join(f"{k}: " + ("diverged (NaN)" if v["diverged"] else
                                             f"{100 * v['test_accuracy']:.1f}%" + (" (chance level: training "
                                             "collapsed)" if failed[k] else "")) +
                                 (f", largest gradient norm {v['grad_norm_max']:.3g}" if v["grad_norm_max"] else "")
                                 for k, v in res.items())}


CLAIMS: dict[str, Claim] = {c.name: c for c in [
    Claim("bn_higher_lr", "Batch normalization allows much higher learning rates.",
          "notes: forward pass / normalization; Ioffe & Szegedy 2015 (1502.03167) sec. 3.3",
          "3-layer CNN with and without BN, one-cycle peak lr 0.003-1, 3 epochs on 6k images; holds if the largest rate "
          "at which BN reaches 90% of the best accuracy of all runs is larger than the un-normalized network's",
          bn_higher_lr, varies=("model.norm",)),
    Claim("bn_small_batch", "Batch norm degrades at small batch sizes; group norm and batch renorm do not.",
          "notes: normalization; Wu & He 2018 (1803.08494) fig. 1; Ioffe 2017 (1702.03275)",
          "MLP (BatchNorm1d sees only N values per feature), batch 2 vs 64, lr scaled with the batch, 2 epochs on 4k "
          "images; holds if BN loses > 3 pp, GN less than half of that and batch renorm less than BN", bn_small_batch,
          varies=("model.norm", "model.norm_groups"), images=False),
    Claim("gn_train_eval", "Group norm computes the same thing in training and inference; batch norm does not.",
          "notes: normalization; Wu & He 2018",
          "trained CNNs evaluated in train mode (batches of 2 and 256) vs eval mode; holds if GN's logits agree to "
          "1e-4 and BN's differ by > 0.01", gn_train_eval, task=None, varies=("model.norm", "model.norm_groups")),
    Claim("checkpointing", "Gradient checkpointing trades compute for memory.",
          "notes: backward pass / memory; Chen et al. 2016 (1604.06174)",
          "16-layer MLP, bytes saved for backward and step time with 0-16 recomputed segments; holds if some "
          "segmentation halves the memory at a time cost > 1x", checkpointing, takes_data=False, takes_model=False),
    Claim("batch_memory_noise", "Smaller batches use less memory and give noisier gradients.",
          "notes: weight update / batch size",
          "bytes saved for backward and E||g_B - g||^2 at batch 16, 64, 256 (fixed model, eval-mode BN); holds if "
          "memory rises and noise falls with the batch", batch_memory_noise),
    Claim("label_smoothing_calibration", "Label smoothing improves calibration.",
          "notes: losses; Müller, Kornblith & Hinton 2019 (1906.02629)",
          "CNN overfit on 2k images (25 epochs, no weight decay) with smoothing 0, 0.05, 0.1; holds if a smoothed "
          "model's expected calibration error is lower than plain cross-entropy's", label_smoothing_calibration),
    Claim("early_stopping", "Early stopping prevents overfitting.",
          "notes: evaluation; Prechelt 1998",
          "CNN on 1.5k images for 30 epochs at a constant rate; holds if the weights kept by patience, GL_5 and UP_2 "
          "and the best validation epoch all have lower test loss than the last epoch's", early_stopping),
    Claim("onecycle", "The one-cycle policy speeds up convergence (super-convergence).",
          "notes: weight update / schedules; Smith 2018 (1803.09820), Smith & Topin 2017 (1708.07120)",
          "CNN, 3 epochs on 10k images: one-cycle (peak 0.3) vs constant rates 0.02 and 0.1; holds if one-cycle's "
          "final accuracy beats the best constant rate's", onecycle),
    Claim("clipping", "Gradient clipping prevents divergence.",
          "notes: weight update / gradient transforms; Pascanu et al. 2013 (1211.5063)",
          "CNN without normalization at one-cycle peak lr 0.5, with and without clip_norm 1.0; holds if the "
          "unclipped run diverges (NaN) or collapses to chance level and the clipped one exceeds 50%; with your model "
          "(--set model...): the model as it is, its normalization included", clipping),
]}


def run_claim(name: str, lab: Lab) -> dict[str, Any]:
    """Run one claim's experiment; write ``NAME.png`` and ``NAME.json`` under ``lab.out``; return the verdict."""
    if name not in CLAIMS:
        raise KeyError(f"unknown claim {name!r}; choose from: {', '.join(CLAIMS)}")
    claim = CLAIMS[name]
    lab.claim = claim
    try:
        lab.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        res = claim.run(lab)
    finally:
        lab.claim = None
    seconds = time.perf_counter() - t0
    fig = res.pop("fig")
    import textwrap
    w, h = fig.get_size_inches()
    lines = [f"{claim.text}  Verdict: {'HOLDS' if res['holds'] else 'DOES NOT HOLD'} in this experiment."]
    lines += textwrap.wrap(res["summary"], width=int(w * 17))
    fig.suptitle("\n".join(lines), fontsize=7.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.14 * len(lines) + 0.08) / h))
    png = savefig(fig, lab.out / f"{name}.png")
    verdict = {"claim": name, "text": claim.text, "source": claim.source, "experiment": claim.how,
               "holds": bool(res["holds"]), "summary": res["summary"], "numbers": res["numbers"],
               "seconds": seconds, "quick": lab.quick, "dataset": lab.dataset if claim.takes_data else None, "plot": str(png),
               "sets": [x for x in lab.sets if (_key(x).startswith("data.") and claim.takes_data)
                        or (_key(x).startswith("model.") and claim.takes_model)]}
    from ..training.checkpoint import atomic_write_json
    atomic_write_json(lab.out / f"{name}.json", json.loads(json.dumps(verdict, default=_plain)))
    return verdict


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return str(v)
