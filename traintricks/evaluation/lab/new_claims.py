"""Six claims from the notes' reading list (issue 18): augmentation instead of explicit regularization, batch
norm's smoother landscape, small batches' generalization and speed, Newton's attraction to saddles, Huber's
robustness to outliers, auxiliary heads' earlier features. One seed's experiment each, as in :mod:`.claims`."""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from .claims import _first
from .core import Lab, seed_lines


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lab: Lab) -> float:
    was = model.training
    model.eval()
    with torch.no_grad(), lab.autocast():
        pred = torch.cat([model(x[i:i + 1000]).float().argmax(1) for i in range(0, len(x), 1000)])
    model.train(was)
    return (pred == y).float().mean().item()


# ------------------------------------------------------------------------------------------------ augmentation
AUG_VARIANTS = {
    "weight decay + dropout": ["optim.weight_decay=5e-4", 'model.regularization=[{name = "dropout", p = 0.5}]'],
    "augmentation": ["data.augment=[\"translate\"]"],
    "augmentation + wd + dropout": ["data.augment=[\"translate\"]", "optim.weight_decay=5e-4",
                                    'model.regularization=[{name = "dropout", p = 0.5}]'],
}


def augmentation_vs_regularization(lab: Lab) -> dict[str, Any]:
    acc = {}
    limit = lab.n(800, 0)
    for name, extra in AUG_VARIANTS.items():
        _, s = lab.train(["optim.weight_decay=0.0", "loss.label_smoothing=0.0", "lr=0.05", "batch_size=50",
                          f"epochs={lab.n(8, 2)}", "data.augment_from_epoch=0", "model.widths=[16, 32, 64]",
                          "model.blocks=[1, 1, 1]", *extra], limit, val_size=0, test=3000)
        acc[name] = s["test_accuracy"] if s else 0.0
    return {"criteria": {"aug_vs_explicit": 100 * (acc["augmentation"] - acc["weight decay + dropout"]),
                         "explicit_on_top": 100 * (acc["augmentation"] - acc["augmentation + wd + dropout"]) + 1.0},
            "numbers": {"accuracy": acc}}


def _plot_augmentation(ax, runs):
    p, rs = _first(runs)
    names = list(AUG_VARIANTS)
    vals = [[100 * r["accuracy"][k] for r in rs] for k in names]
    ax.bar(range(len(names)), [sum(v) / len(v) for v in vals], color=[f"C{i}" for i in range(len(names))], alpha=0.7)
    for i, v in enumerate(vals):
        ax.scatter([i] * len(v), v, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=7)
    ax.set_ylim(max(0, min(min(v) for v in vals) - 5), min(100, max(max(v) for v in vals) + 3))
    ax.set_ylabel(f"test accuracy (%), {p}; dots: seeds")


# ------------------------------------------------------------------------------------------------ bn smoothness
def _flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad])])


def _loss_grad(model: nn.Module, xb, yb, lab: Lab, grad: bool = True):
    with lab.autocast():
        loss = nn.functional.cross_entropy(model(xb).float(), yb)
    return loss.item(), (_flat_grad(model, loss).float() if grad else None)


def bn_smoothness(lab: Lab) -> dict[str, Any]:
    """Santurkar et al. 2018 (1805.11604), fig. 4: at steps of training, move along the gradient by
    ``eta * g`` for ``eta`` in a range of step sizes and record the range of the loss (its variation) and the
    largest ``||grad L(w - eta g) - grad L(w)||`` (gradient predictiveness: how much the gradient changes)."""
    from ...training.recipe import build_model
    data = lab.data(lab.n(4000, 0))
    x, y = data.train_x, data.train_y
    steps, every, lr = lab.n(100, 20), lab.n(25, 10), 0.1
    etas = [lr * s for s in (0.5, 1, 2, 4)]
    res = {}
    for norm in ("batchnorm", "none"):
        g = lab.generator()
        model = build_model(lab.config([f"model.norm={norm}", "model.widths=[16, 32, 64]", "model.blocks=[1, 2, 2]"]),
                            data.input_shape, data.num_classes)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        ranges, changes, losses = [], [], []
        probe = torch.randperm(len(x), generator=g)[:256]           # the batch the landscape is probed on
        for step in range(steps + 1):
            if step % every == 0 and step > 0:
                l0, g0 = _loss_grad(model, x[probe], y[probe], lab)
                w0 = [p.detach().clone() for p in params]
                ls, dg = [l0], []
                for eta in etas:
                    with torch.no_grad():
                        off = 0
                        for p, w in zip(params, w0):
                            p.copy_(w - eta * g0[off:off + p.numel()].view_as(p))
                            off += p.numel()
                    le, ge = _loss_grad(model, x[probe], y[probe], lab)
                    ls.append(le)
                    dg.append((ge - g0).norm().item())
                with torch.no_grad():
                    for p, w in zip(params, w0):
                        p.copy_(w)
                fin = [v for v in ls if math.isfinite(v)]
                ranges.append(max(fin) - min(fin) if len(fin) == len(ls) else float("inf"))
                changes.append(max(dg) if all(math.isfinite(v) for v in dg) else float("inf"))
            if step == steps:
                break
            idx = torch.randint(len(x), (64,), generator=g)
            with lab.autocast():
                loss = nn.functional.cross_entropy(model(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        res[norm] = {"loss_range": ranges, "grad_change": changes, "train_loss": losses[-every:]}
    at = [every * (i + 1) for i in range(len(res["none"]["loss_range"]))]

    def ratio(key):             # decades by which the un-normalized network's measure exceeds BN's (median)
        r = sorted(math.log10(max(a, 1e-12) / max(b, 1e-12)) if math.isfinite(a) else 3.0
                   for a, b in zip(res["none"][key], res["batchnorm"][key]))
        return r[len(r) // 2]
    return {"criteria": {"loss_range": ratio("loss_range"), "grad_change": ratio("grad_change")},
            "numbers": {"steps": at, "etas": etas, **res}}


def _plot_bn_smoothness(axes, runs):
    p, rs = _first(runs)
    at = rs[0]["steps"]
    for ax, key, label in ((axes[0], "loss_range", "loss range along -g"),
                           (axes[1], "grad_change", "max ||grad(w - eta g) - grad(w)||")):
        seed_lines(ax, at, {k: [[min(v, 1e6) for v in r[k][key]] for r in rs] for k in ("batchnorm", "none")})
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{label} ({p})", fontsize=8)
        ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ batch size
SMALL, LARGE = 16, 256


def batch_size_generalization(lab: Lab) -> dict[str, Any]:
    """The same network and learning rate, batch 16 vs 256 for the same number of epochs: test accuracy against
    epochs, steps and wall time."""
    from ...training.recipe import build_model
    data = lab.data(lab.n(3000, 0))
    x, y = data.train_x, data.train_y
    tx, ty = data.test_x[:2000], data.test_y[:2000]
    epochs = lab.n(3, 1)
    res = {}
    for b in (SMALL, LARGE):
        g = lab.generator()
        model = build_model(lab.config(["model.widths=[16, 32, 64]", "model.blocks=[1, 1, 1]"]),
                            data.input_shape, data.num_classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        curve, seconds, step = [], 0.0, 0
        per_epoch = len(x) // b
        checks = {round(per_epoch * epochs * f) for f in (0.1, 0.25, 0.5, 0.75, 1.0)}
        checks.add((len(x) // LARGE) * epochs)          # the large batch's last step: compared at equal steps
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(per_epoch):
                idx = perm[i * b:(i + 1) * b]
                t0 = time.perf_counter()
                with lab.autocast():
                    loss = nn.functional.cross_entropy(model(x[idx]).float(), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seconds += time.perf_counter() - t0
                step += 1
                if step in checks:
                    curve.append({"step": step, "epoch": step / per_epoch, "seconds": seconds,
                                  "test_accuracy": _accuracy(model, tx, ty, lab)})
        res[str(b)] = curve
    small, large = res[str(SMALL)], res[str(LARGE)]
    at_large_end = next(c for c in small if c["step"] == large[-1]["step"])
    return {"criteria": {"generalizes": 100 * (small[-1]["test_accuracy"] - large[-1]["test_accuracy"]),
                         "slower_per_step": 100 * (large[-1]["test_accuracy"] - at_large_end["test_accuracy"]),
                         "slower_wall": math.log10((small[-1]["seconds"] / small[-1]["epoch"]) /
                                                   (large[-1]["seconds"] / large[-1]["epoch"]))},
            "numbers": res}


def _plot_batch_size(axes, runs):
    p, rs = _first(runs)
    for ax, key, label in ((axes[0], "step", "optimizer steps"), (axes[1], "seconds", "training wall time (s)")):
        for i, b in enumerate((SMALL, LARGE)):
            for j, r in enumerate(rs):
                c = r[str(b)]
                ax.plot([v[key] for v in c], [100 * v["test_accuracy"] for v in c], "o-", color=f"C{i}", ms=3,
                        lw=1, alpha=0.7, label=f"batch {b}" if j == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"test accuracy (%), {p}")
        ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ newton / saddles
def newton_saddle(lab: Lab) -> dict[str, Any]:
    """A 2-4-1 tanh network without biases on a teacher's regression targets, started near the origin: there
    every weight is 0, a critical point whose Hessian couples the two layers into +-|x . w2| directions -- a
    saddle. Damped Newton (lr 1) and saddle-free Newton from the same start, 30 steps each."""
    from ...optim.second_order import Newton, SaddleFreeNewton
    g = lab.generator()
    n, d, h = 64, 2, 4
    x = torch.randn(n, d, generator=g)
    teacher = torch.tanh(x @ torch.randn(d, h, generator=g)) @ torch.randn(h, 1, generator=g)
    start = [0.1 * torch.randn(h, d, generator=g), 0.1 * torch.randn(1, h, generator=g)]

    def loss_of(w1, w2):
        with lab.autocast():
            out = torch.tanh(x @ w1.T) @ w2.T
        return 0.5 * (out.float() - teacher).pow(2).mean()
    saddle_loss = loss_of(torch.zeros(h, d), torch.zeros(1, h)).item()
    res = {}
    for name, cls in (("newton", Newton), ("saddle-free newton", SaddleFreeNewton)):
        w1, w2 = (s.clone().requires_grad_(True) for s in start)
        opt = cls([w1, w2], lr=1.0, damping=1e-3 if name == "newton" else 1e-2)
        curve = []
        for _ in range(lab.n(30, 10)):
            loss = opt.step(lambda: loss_of(w1, w2))
            curve.append(loss.item())
        final = loss_of(w1, w2)
        hess = torch.autograd.functional.hessian(lambda a, b: loss_of(a, b), (w1.detach(), w2.detach()))
        m = torch.cat([torch.cat([hess[i][j].reshape(w.numel(), v.numel()) for j, v in enumerate((w1, w2))], 1)
                       for i, w in enumerate((w1, w2))]).float()
        eig = torch.linalg.eigvalsh((m + m.T) / 2)
        gn = torch.cat([t.flatten() for t in torch.autograd.grad(final, (w1, w2))]).norm().item()
        res[name] = {"loss": curve, "final_loss": final.item(), "grad_norm": gn, "min_eig": eig[0].item(),
                     "max_abs_eig": eig.abs().max().item(),
                     "distance_to_origin": torch.cat([w1.detach().flatten(), w2.detach().flatten()]).norm().item()}
    nt, sf = res["newton"], res["saddle-free newton"]
    return {"criteria": {"loss": math.log10(max(nt["final_loss"], 1e-12) / max(sf["final_loss"], 1e-12)) - math.log10(2),
                         "saddle": -nt["min_eig"] / max(nt["max_abs_eig"], 1e-12) - 0.01},
            "numbers": {"saddle_loss": saddle_loss, **res}}


def _plot_newton(ax, runs):
    p, rs = _first(runs)
    names = ("newton", "saddle-free newton")
    n = len(rs[0]["newton"]["loss"])
    seed_lines(ax, list(range(1, n + 1)), {k: [r[k]["loss"] for r in rs] for k in names})
    s0 = sum(r["saddle_loss"] for r in rs) / len(rs)
    ax.axhline(s0, ls=":", color="gray", label="loss at the saddle (0), mean")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss ({p})")
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ huber
OUTLIER_FRACTIONS = (0.0, 0.05, 0.1, 0.2)


def huber_outliers(lab: Lab) -> dict[str, Any]:
    """A linear regression (10 features, 400 points, noise 0.5) whose targets get, for a fraction of the points,
    an offset of +10 to +30 (one-sided: it drags a mean); fit with L2 (MSE) and with Huber (delta 1) by full-batch
    L-BFGS; the error is the test RMSE on targets with the same noise and no outliers."""
    from ...losses.regression import HuberLoss
    g = lab.generator()
    n, d = 400, 10
    w_true = torch.randn(d, 1, generator=g)
    x, xt = torch.randn(n, d, generator=g), torch.randn(1000, d, generator=g)
    clean = x @ w_true + 0.5 * torch.randn(n, 1, generator=g)
    yt = xt @ w_true + 0.5 * torch.randn(1000, 1, generator=g)       # the test targets: clean of outliers
    res = {"mse": [], "huber": []}
    for frac in OUTLIER_FRACTIONS:
        y = clean.clone()
        k = int(frac * n)
        idx = torch.randperm(n, generator=g)[:k]
        y[idx] += 10 + 20 * torch.rand(k, 1, generator=g)
        for name, loss_fn in (("mse", nn.MSELoss()), ("huber", HuberLoss(delta=1.0))):
            torch.manual_seed(lab.run_seed)
            model = nn.Linear(d, 1)
            opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=lab.n(300, 100), history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

            def closure(model=model, loss_fn=loss_fn, y=y, opt=opt):
                opt.zero_grad(set_to_none=True)
                with lab.autocast():
                    loss = loss_fn(model(x).float(), y)
                loss.backward()
                return loss
            opt.step(closure)
            with torch.no_grad():
                res[name].append((model(xt) - yt).pow(2).mean().sqrt().item())
    worst = len(OUTLIER_FRACTIONS) - 2                  # 10% outliers
    return {"criteria": {"rmse": math.log10(res["mse"][worst] / res["huber"][worst]),
                         "clean": 0.02 - math.log10(res["huber"][0] / res["mse"][0])},
            "numbers": {"outlier_fraction": list(OUTLIER_FRACTIONS), "test_rmse": res}}


def _plot_huber(ax, runs):
    p, rs = _first(runs)
    seed_lines(ax, [100 * f for f in OUTLIER_FRACTIONS], {k: [r["test_rmse"][k] for r in rs] for k in ("mse", "huber")})
    ax.set_yscale("log")
    ax.set_xlabel("planted outliers (% of the training targets)")
    ax.set_ylabel(f"clean test RMSE ({p})")
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------------------------ aux heads
def aux_heads_probe(lab: Lab) -> dict[str, Any]:
    """A pre-activation ResNet (3 stages) trained 2 epochs (42 steps: in 1 epoch the network stayed near 33% test
    accuracy, its stage 0 near its initialization) with and without an auxiliary head after stage 0 (the same seed);
    then a linear probe (logistic regression on the 2x2-average-pooled, standardized
    stage-0 features, 200 L-BFGS steps) fit on the 3000 training images, tested on 5000 test images."""
    limit = lab.n(3000, 0)
    res = {}
    for name, aux in (("auxiliary head", "[0]"), ("no auxiliary head", "[]")):
        trainer, s = lab.train(["model.name=preact_resnet", "model.blocks=[1, 1, 1]", "model.widths=[16, 32, 64]",
                                "model.stem_width=16", "model.bottleneck=false", f"model.aux_heads={aux}",
                                "model.aux_weight=0.3", "lr=0.1", "batch_size=128", f"epochs={lab.n(2, 1)}"],
                                limit, val_size=0)
        model = trainer.model
        model.eval()
        stage0 = model.features[:2]                  # the stem and stage 0's block (blocks=[1, 1, 1])
        data = lab.data(limit, 0)

        def feats(x):
            with torch.no_grad(), lab.autocast():
                return torch.cat([nn.functional.adaptive_avg_pool2d(stage0(x[i:i + 500]).float(), 2).flatten(1)
                                  for i in range(0, len(x), 500)])
        ftr, fte = feats(data.train_x), feats(data.test_x)
        mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
        ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
        ytr, yte = data.train_y, data.test_y
        torch.manual_seed(lab.run_seed)
        probe = nn.Linear(ftr.shape[1], data.num_classes)
        opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=lab.n(200, 30), history_size=20)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(probe(ftr), ytr) + 1e-4 * probe.weight.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            probe_acc = (probe(fte).argmax(1) == yte).float().mean().item()
        res[name] = {"probe_accuracy": probe_acc, "test_accuracy": s["test_accuracy"] if s else 0.0}
    return {"criteria": {"probe": 100 * (res["auxiliary head"]["probe_accuracy"] -
                                         res["no auxiliary head"]["probe_accuracy"])},
            "numbers": res}


def _plot_aux(ax, runs):
    p, rs = _first(runs)
    names = ("no auxiliary head", "auxiliary head")
    for k, key in enumerate(("probe_accuracy", "test_accuracy")):
        vals = [[100 * r[n][key] for r in rs] for n in names]
        xs = [k + (i - 0.5) * 0.35 for i in range(2)]
        ax.bar(xs, [sum(v) / len(v) for v in vals], 0.35, color=["C0", "C1"], alpha=0.7,
               label=list(names) if k == 0 else None)
        for x, v in zip(xs, vals):
            ax.scatter([x] * len(v), v, color="k", s=8, zorder=3)
    ax.set_xticks([0, 1], ["linear probe on stage 0", "the network's test accuracy"], fontsize=7)
    ax.set_ylabel(f"accuracy (%), {p}; dots: seeds")
    ax.legend(fontsize=7)
