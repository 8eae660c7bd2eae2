"""The notes' first nine claims (normalization, memory, calibration, early stopping, schedules, clipping), each
as one seed's experiment: it returns the numbers it measured and each criterion's value (positive: the claim's
side); :func:`~traintricks.evaluation.lab.core.run_claim` repeats it over seeds and precisions and decides."""
from __future__ import annotations

import time
from typing import Any

import torch

from .core import Lab, seed_lines


def _first(runs: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """The runs the experiment's panel shows: fp32's (bf16's numbers are in the JSON and the verdict panel)."""
    p = "fp32" if "fp32" in runs else next(iter(runs))
    return p, runs[p]


def _acc(s: dict | None, chance: float) -> float:
    """A run's test accuracy; a diverged run (no summary) counts as chance level."""
    return s["test_accuracy"] if s else chance


# ------------------------------------------------------------------------------------------------ bn_higher_lr
BN_LRS = (0.03, 0.1, 0.3, 1.0)


def bn_higher_lr(lab: Lab) -> dict[str, Any]:
    import math
    acc: dict[str, list[float]] = {"batchnorm": [], "none": []}
    limit = lab.n(3000, 0)
    chance = 1 / lab.data(limit).num_classes
    for norm in acc:
        for lr in BN_LRS:
            # 2 epochs (42 steps), the one-cycle reaching its nominal peak: in 1 epoch (21 steps) the library's
            # min_warmup_steps halved every peak and a fresh network saw its peak after 6 steps of warm-up, a
            # transient the claim is not about
            _, s = lab.train([f"model.norm={norm}", f"lr={lr}", "batch_size=128", f"epochs={lab.n(2, 1)}",
                              "schedule.min_warmup_steps=0", "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]"],
                             limit)
            acc[norm].append(_acc(s, chance))
    # each network's usable rates: those reaching 90% of *its own* best accuracy (a bar set by the better network
    # would count BN's higher accuracy as a higher rate); the largest, interpolated in log(lr) where the
    # accuracy crosses the bar (the grid is half-decade: a step count would only say 0 or +-0.5 decades)
    bars = {k: 0.9 * max(v) for k, v in acc.items()}
    usable = {k: usable_rate(BN_LRS, v, bars[k]) for k, v in acc.items()}
    common = 0.9 * max(max(v) for v in acc.values())     # the former bar, for reference
    return {"criteria": {"usable_lr": math.log10(usable["batchnorm"] / usable["none"]) - math.log10(2)},
            "numbers": {"lrs": list(BN_LRS), "accuracy": acc, "bar": bars, "largest_usable_lr": usable,
                        "largest_reaching_the_better_networks_bar": {
                            k: max((lr for lr, a in zip(BN_LRS, v) if a >= common), default=None)
                            for k, v in acc.items()}}}


def usable_rate(lrs, acc, bar) -> float:
    """The largest rate reaching ``bar``: the last grid rate at or above it, moved towards the next rate by the
    fraction of the accuracy drop that stays above the bar (log-linear interpolation); the largest grid rate if it
    reaches the bar (censored: the grid's end)."""
    import math
    k = max(i for i, a in enumerate(acc) if a >= bar)
    if k == len(lrs) - 1:
        return lrs[k]
    frac = (acc[k] - bar) / (acc[k] - acc[k + 1])
    return lrs[k] * math.exp(frac * math.log(lrs[k + 1] / lrs[k]))


def _plot_bn_higher_lr(ax, runs):
    p, rs = _first(runs)
    seed_lines(ax, BN_LRS, {k: [r["accuracy"][k] for r in rs] for k in ("batchnorm", "none")}, 100)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (one-cycle, 2 epochs)")
    ax.set_ylabel(f"test accuracy (%), {p}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------------------------------------ bn_small_batch
NORMS = ("batchnorm", "groupnorm", "batchrenorm")


def bn_small_batch(lab: Lab) -> dict[str, Any]:
    batches = [2, 64] if not lab.quick else [4, 64]
    acc = {n: [] for n in NORMS}
    limit = lab.n(1500, 0)
    chance = 1 / lab.data(limit).num_classes
    for norm in NORMS:
        for bs in batches:
            _, s = lab.train(["model.name=mlp", "model.hidden=[256, 256]", f"model.norm={norm}", "model.norm_groups=8",
                              f"lr={0.1 * bs / 64:.6g}", f"batch_size={bs}", "epochs=1"], limit)
            acc[norm].append(_acc(s, chance))
    drop = {n: 100 * (v[-1] - v[0]) for n, v in acc.items()}
    return {"criteria": {"bn_drop": drop["batchnorm"] - 3.0, "gn": drop["batchnorm"] / 2 - drop["groupnorm"],
                         "brn": drop["batchnorm"] - drop["batchrenorm"]},
            "numbers": {"batch_sizes": batches, "accuracy": acc, "drop_pp": drop}}


def _plot_bn_small_batch(ax, runs):
    p, rs = _first(runs)
    w = 0.25
    batches = rs[0]["batch_sizes"]
    for i, n in enumerate(NORMS):
        xs = [j + (i - 1) * w for j in range(len(batches))]
        per = [[100 * r["accuracy"][n][j] for r in rs] for j in range(len(batches))]
        ax.bar(xs, [sum(v) / len(v) for v in per], w, label=n, color=f"C{i}", alpha=0.7)
        for x, v in zip(xs, per):
            ax.scatter([x] * len(v), v, color="k", s=6, zorder=3)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel(f"test accuracy (%), {p}; dots: seeds")
    ax.set_ylim(max(0, min(100 * min(min(v) for v in r["accuracy"].values()) for r in rs) - 10), 100)
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ gn_train_eval
def gn_train_eval(lab: Lab) -> dict[str, Any]:
    res = {}
    for norm in ("groupnorm", "batchnorm"):
        trainer, s = lab.train([f"model.norm={norm}", "model.norm_groups=8", "lr=0.1", "batch_size=128",
                                "epochs=1", "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]"], lab.n(1500, 0))
        model = trainer.model
        x = trainer.test_loader.x[:256]
        with torch.no_grad(), lab.autocast():
            model.eval()
            ev = model(x).float()
            model.train()
            tr_full = model(x).float()                     # train mode, a batch of 256
            tr_small = torch.cat([model(x[i:i + 2]).float() for i in range(0, 32, 2)])   # train mode, batches of 2
            model.eval()
        res[norm] = {"max_diff_train_vs_eval_batch256": (tr_full - ev).abs().max().item(),
                     "max_diff_train_vs_eval_batch2": (tr_small - ev[:32]).abs().max().item(),
                     "agreement_batch2": (tr_small.argmax(1) == ev[:32].argmax(1)).float().mean().item()}
    import math
    gn, bn = res["groupnorm"]["max_diff_train_vs_eval_batch2"], res["batchnorm"]["max_diff_train_vs_eval_batch2"]
    # decades below 1e-4 (GN; an exact 0 counts as 1e-12) and above 1e-2 (BN)
    return {"criteria": {"gn_same": -4 - math.log10(max(gn, 1e-12)), "bn_differs": math.log10(max(bn, 1e-12)) + 2},
            "numbers": res}


def _plot_gn_train_eval(ax, runs):
    p, rs = _first(runs)
    keys = ["max_diff_train_vs_eval_batch256", "max_diff_train_vs_eval_batch2"]
    for i, norm in enumerate(("groupnorm", "batchnorm")):
        vals = [[max(r[norm][k], 1e-9) for r in rs] for k in keys]
        xs = [j + 0.35 * i for j in range(2)]
        ax.bar(xs, [sum(v) / len(v) for v in vals], 0.35, label=norm, alpha=0.7)
        for x, v in zip(xs, vals):
            ax.scatter([x] * len(v), v, color="k", s=6, zorder=3)
    ax.set_yscale("log")
    ax.set_xticks([0.17, 1.17], ["train-mode batch 256", "train-mode batches of 2"])
    ax.set_ylabel(f"max |logit(train) - logit(eval)|, {p}")
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ checkpointing
def checkpointing(lab: Lab) -> dict[str, Any]:
    from ...memory import checkpoint_sequential
    from ...memory.measure import saved_bytes
    lab.generator()
    depth, width, batch = lab.n(16, 4), lab.n(512, 128), lab.n(256, 32)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers)
    x = torch.randn(batch, width, requires_grad=True)
    rows = []
    for segments in [0, 2, 4, 8] if not lab.quick else [0, 2]:
        def run(s=segments):
            with lab.autocast():
                return net(x) if s == 0 else checkpoint_sequential(net, s, x)
        b = saved_bytes(run, exclude=net)
        times = []
        for _ in range(lab.n(5, 1)):
            net.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            run().float().square().mean().backward()
            times.append(time.perf_counter() - t0)
        rows.append({"segments": segments, "saved_mb": b / 2 ** 20, "step_ms": 1000 * sorted(times)[len(times) // 2]})
    base = rows[0]
    for r in rows:
        r["memory_ratio"], r["time_ratio"] = r["saved_mb"] / base["saved_mb"], r["step_ms"] / base["step_ms"]
    best = min(rows[1:], key=lambda r: r["memory_ratio"])
    return {"criteria": {"memory": 0.5 - best["memory_ratio"], "time": best["time_ratio"] - 1.0},
            "numbers": {"rows": rows, "best_segments": best["segments"]}}


def _plot_checkpointing(ax, runs):
    for i, (p, rs) in enumerate(runs.items()):
        for j, r in enumerate(rs):
            rows = r["rows"]
            ax.plot([x["memory_ratio"] for x in rows], [x["time_ratio"] for x in rows], "o-", color=f"C{i}",
                    lw=0.8, alpha=0.7, label=p if j == 0 else None)
        for x in rs[0]["rows"]:
            ax.annotate(f"{x['segments'] or 'none'}", (x["memory_ratio"], x["time_ratio"]), fontsize=7)
    ax.set_xlabel("activation memory saved for backward (x plain)")
    ax.set_ylabel("forward+backward time (x plain)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------------------------------------ batch_memory_noise
BATCHES = (16, 64, 256)


def batch_memory_noise(lab: Lab) -> dict[str, Any]:
    import math
    from ...memory.measure import saved_bytes
    from ...training.recipe import build_model
    data = lab.data(lab.n(4000, 0))
    cfg = lab.config()
    g = lab.generator()
    model = build_model(cfg, data.input_shape, data.num_classes)
    model.eval()                    # fixed statistics: the gradient is a plain mean over examples
    loss_fn = torch.nn.CrossEntropyLoss()
    params = [p for p in model.parameters()]
    x, y = data.train_x, data.train_y
    n = min(len(x), lab.n(2048, 512))

    def grad(idx):
        model.zero_grad(set_to_none=True)
        with lab.autocast():
            loss = loss_fn(model(x[idx]).float(), y[idx])
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])
    full = sum(grad(torch.arange(i, min(i + 512, n))) * (min(i + 512, n) - i) for i in range(0, n, 512)) / n
    rows = []
    for b in BATCHES:
        xb = x[:b].clone()          # a view of x[:b] would count the whole dataset's storage as saved

        def fwd(xb=xb, b=b):
            with lab.autocast():
                return loss_fn(model(xb).float(), y[:b])
        mem = saved_bytes(fwd, exclude=model)
        devs = [(grad(torch.randperm(n, generator=g)[:b]) - full).pow(2).sum().item() for _ in range(lab.n(12, 3))]
        rows.append({"batch_size": b, "saved_mb": mem / 2 ** 20, "grad_noise": sum(devs) / len(devs)})
    for r in rows:
        r["noise_x_batch"] = r["grad_noise"] * r["batch_size"]
    # the smallest step up in memory and down in noise between neighbouring batch sizes (log10: decades)
    mem_up = min(math.log10(b["saved_mb"] / a["saved_mb"]) for a, b in zip(rows, rows[1:]))
    noise_down = min(math.log10(a["grad_noise"] / b["grad_noise"]) for a, b in zip(rows, rows[1:]))
    return {"criteria": {"memory": mem_up, "noise": noise_down}, "numbers": rows}


def _plot_batch_memory_noise(axes, runs):
    p, rs = _first(runs)
    seed_lines(axes[0], BATCHES, {p: [[x["saved_mb"] for x in r] for r in rs]})
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("batch size")
    axes[0].set_ylabel("activation memory for backward (MB)")
    seed_lines(axes[1], BATCHES, {f"measured, {p}": [[x["grad_noise"] for x in r] for r in rs]})
    g0 = sum(r[0]["grad_noise"] for r in rs) / len(rs)
    axes[1].plot(BATCHES, [g0 * BATCHES[0] / b for b in BATCHES], "--", color="gray", label="1 / B")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("batch size")
    axes[1].set_ylabel("E ||g_B - g||^2")
    axes[1].legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ label smoothing
SMOOTHING = (0.0, 0.05, 0.1)


def label_smoothing_calibration(lab: Lab) -> dict[str, Any]:
    # the regime the claim is about (Müller et al.: a network trained to fit its training set is overconfident):
    # 20 epochs of 16 steps on 800 images fit them (100% training accuracy); ECE on 5k test images
    from ..metrics import expected_calibration_error
    res = {}
    for eps in SMOOTHING:
        trainer, s = lab.train([f"loss.label_smoothing={eps}", "optim.weight_decay=0.0", "lr=0.1", "batch_size=50",
                                f"epochs={lab.n(20, 2)}", "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]"],
                               lab.n(800, 0), val_size=0, test=5000)
        with torch.no_grad(), lab.autocast():
            trainer.model.eval()
            x = trainer.test_loader.x
            probs = torch.cat([torch.softmax(trainer.model(x[i:i + 1000]).float(), 1) for i in range(0, len(x), 1000)])
        y = trainer.test_loader.y
        res[str(eps)] = {"ece": expected_calibration_error(probs, y), "accuracy": (probs.argmax(1) == y).float().mean().item(),
                         "mean_confidence": probs.max(1).values.mean().item(),
                         "train_accuracy": trainer.history[-1].get("train_accuracy")}
    best = min(res[str(e)]["ece"] for e in SMOOTHING if e > 0)
    return {"criteria": {"ece": 100 * (res["0.0"]["ece"] - best)}, "numbers": res}


def _plot_label_smoothing(ax, runs):
    p, rs = _first(runs)
    per = {"ECE": [[100 * r[str(e)]["ece"] for e in SMOOTHING] for r in rs],
           "overconfidence (conf - acc)": [[100 * (r[str(e)]["mean_confidence"] - r[str(e)]["accuracy"])
                                            for e in SMOOTHING] for r in rs]}
    seed_lines(ax, SMOOTHING, per)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("label smoothing epsilon")
    ax.set_ylabel(f"% ({p})")
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ early stopping
RULES = ("patience 5", "GL_5", "UP_2 (strips of 3)", "best validation epoch")


def early_stopping(lab: Lab) -> dict[str, Any]:
    # overfit on purpose: 500 training images, no weight decay or smoothing, a constant rate for 30 epochs; the
    # question is whether the rules keep weights better than the last epoch's, by a margin over the seeds
    epochs = lab.n(25, 3)
    trainer, s = lab.train(["loss.label_smoothing=0.0", "optim.weight_decay=0.0", "lr=0.05", "schedule.name=constant",
                            "batch_size=50", f"epochs={epochs}", "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]",
                            "early_stopping.name=patience", f"early_stopping.patience={epochs}",
                            "test_every_epoch=true"],
                           lab.n(1000, 0), val_size=lab.n(500, 0.2), test=1000)
    h = trainer.history
    best = min(range(len(h)), key=lambda i: h[i]["val_loss"])
    # judged: the best validation epoch (what every rule aims at) and the notes' rule ("end training when validation
    # error does not improve for subsequent epochs": patience 5, keeping the best weights); Prechelt's GL_5 and
    # UP_2 are measured and shown beside them
    from ..early_stopping import EARLY_STOPPING
    rules = {"patience 5": EARLY_STOPPING.get("patience")(patience=5), "GL_5": EARLY_STOPPING.get("gl")(alpha=5.0),
             "UP_2 (strips of 3)": EARLY_STOPPING.get("up")(s=2, strip=3)}
    stops = {}
    for name, rule in rules.items():
        stop = next((r["epoch"] for r in h if rule.update(r["epoch"], r)), h[-1]["epoch"])
        kept = rule.best_epoch
        stops[name] = {"stop_epoch": stop, "kept_epoch": kept, "test_accuracy": h[kept - 1]["test_accuracy"],
                       "test_loss": h[kept - 1]["test_loss"]}
    stops["best validation epoch"] = {"stop_epoch": best + 1, "kept_epoch": best + 1,
                                      "test_accuracy": h[best]["test_accuracy"], "test_loss": h[best]["test_loss"]}
    final = {"test_accuracy": h[-1]["test_accuracy"], "test_loss": h[-1]["test_loss"]}
    # the weights kept, against the last epoch's (relative test loss, %)
    gain = {k: 100 * (final["test_loss"] - v["test_loss"]) / final["test_loss"] for k, v in stops.items()}
    return {"criteria": {"best": gain["best validation epoch"], "patience": gain["patience 5"]},
            "numbers": {"final": final, "rules": stops, "test_loss_gain_pct": gain,
                        "curves": {k: [r[k] for r in h] for k in ("train_loss", "val_loss", "test_loss",
                                                                  "test_accuracy")}}}


def _plot_early_stopping(ax, runs):
    p, rs = _first(runs)
    ep = list(range(1, len(rs[0]["curves"]["test_loss"]) + 1))
    seed_lines(ax, ep, {k: [r["curves"][k] for r in rs] for k in ("train_loss", "val_loss", "test_loss")})
    for i, name in enumerate(RULES):
        for r in rs:
            v = r["rules"][name]
            ax.scatter([v["kept_epoch"]], [v["test_loss"]], marker="x", color=f"C{i + 3}", s=20,
                       label=f"kept by {name}" if r is rs[0] else None, zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({p})")
    ax.set_yscale("log")
    ax.legend(fontsize=6)


# ------------------------------------------------------------------------------------------------ onecycle
def onecycle(lab: Lab) -> dict[str, Any]:
    # a short budget (2 epochs on 4k images, 62 steps), where reaching a low loss fast is the point; the constant
    # rates bracket the best constant rate of this network (0.02 beat 0.1 on every recorded run)
    base = ["batch_size=128", f"epochs={lab.n(2, 1)}", "model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]",
            "test_every_epoch=true", "loss.label_smoothing=0.0"]
    limit = lab.n(3000, 0)
    runs = {}
    for lr in (0.01, 0.03, 0.1):
        runs[f"constant {lr:g}"] = lab.train(base + ["schedule.name=constant", f"lr={lr}"], limit, test=2000)[0]
    for lr in (0.1, 0.3):
        runs[f"one-cycle, peak {lr:g}"] = lab.train(base + ["schedule.name=onecycle", f"lr={lr}"], limit, test=2000)[0]
    curves = {k: [r["test_accuracy"] for r in t.history] for k, t in runs.items()}
    losses = {k: [r["test_loss"] for r in t.history] for k, t in runs.items()}
    final = {k: v[-1] for k, v in curves.items()}
    best = {kind: max(v for k, v in final.items() if k.startswith(kind)) for kind in ("constant", "one-cycle")}
    low = {kind: min(v[-1] for k, v in losses.items() if k.startswith(kind)) for kind in ("constant", "one-cycle")}
    return {"criteria": {"accuracy": 100 * (best["one-cycle"] - best["constant"]),
                         "loss": low["constant"] - low["one-cycle"]},
            "numbers": {"curves": curves, "test_loss": losses}}


def _plot_onecycle(ax, runs):
    p, rs = _first(runs)
    names = list(rs[0]["curves"])
    ep = list(range(1, len(rs[0]["curves"][names[0]]) + 1))
    seed_lines(ax, ep, {k: [r["curves"][k] for r in rs] for k in names}, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test accuracy (%), {p}")
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ clipping
def clipping(lab: Lab) -> dict[str, Any]:
    res = {}
    limit = lab.n(3000, 0)
    chance = 1 / lab.data(limit).num_classes
    for clip in (False, True):
        extra = ['grad_transforms=[{name = "clip_norm", max_norm = 1.0}]'] if clip else []
        trainer, s = lab.train(["model.norm=none", "lr=0.5", "batch_size=128", "epochs=1",
                                "model.widths=[16, 32, 64]", *extra], limit, test=2000)
        res["clip_norm 1.0" if clip else "no clipping"] = {
            "diverged": s is None, "test_accuracy": _acc(s, chance),
            "grad_norm_max": max((r.get("grad_norm_max", 0) for r in trainer.history), default=None)}
    c, u = res["clip_norm 1.0"]["test_accuracy"], res["no clipping"]["test_accuracy"]
    # one bar for "diverged or collapsed", 1.5 x chance accuracy (or NaN), for both arms: the claim is that
    # clipping prevents divergence, not that a 1-epoch run reaches a given accuracy
    return {"criteria": {"gap": 100 * (c - u), "clipped": 100 * (c - 1.5 * chance),
                         "unclipped": 100 * (1.5 * chance - u)}, "numbers": res}


def _plot_clipping(ax, runs):
    p, rs = _first(runs)
    labels = ["no clipping", "clip_norm 1.0"]
    vals = [[100 * r[k]["test_accuracy"] for r in rs] for k in labels]
    ax.bar(range(2), [sum(v) / len(v) for v in vals], color=["C3", "C2"], alpha=0.7)
    for i, v in enumerate(vals):
        ax.scatter([i] * len(v), v, color="k", s=8, zorder=3)
        n_div = sum(r[labels[i]]["diverged"] for r in rs)
        ax.text(i, 2, f"{n_div}/{len(rs)} diverged (NaN)", ha="center", fontsize=7)
    ax.set_xticks(range(2), labels)
    ax.set_ylabel(f"test accuracy (%), {p}; dots: seeds")
    ax.set_title("no normalization, one-cycle peak lr 0.5", fontsize=8)
