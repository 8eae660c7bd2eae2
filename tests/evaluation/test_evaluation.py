"""Evaluation techniques: Prechelt's early-stopping criteria, weight EMA, curriculum learning, bag of tricks."""
import math

import pytest
import torch

from traintricks.evaluation import EARLY_STOPPING, GeneralizationLoss, ProgressQuotient, UpStrips


def feed(crit, val, train=None):
    """Feed epochs 1..n; return the epoch at which the criterion stops (None if never)."""
    for t, v in enumerate(val, start=1):
        rec = {"val_loss": v, "train_loss": (train[t - 1] if train else 1.0)}
        if crit.update(t, rec):
            return t
    return None


def test_generalization_loss_follows_its_formula():
    val = [1.0, 0.8, 0.7, 0.72, 0.75, 0.6, 0.62, 0.64]
    crit = GeneralizationLoss(alpha=5.0)
    stop = feed(crit, val)
    # GL(t) = 100 (E_va(t) / min_{t'<=t} E_va - 1): epoch 5 is 0.75/0.7 -> 7.1% > 5 (epoch 4: 2.9%)
    assert stop == 5 and crit.best_epoch == 3
    assert crit.generalization_loss() == pytest.approx(100 * (0.75 / 0.7 - 1))
    assert feed(GeneralizationLoss(alpha=10.0), val) is None


def test_progress_quotient_tolerates_loss_while_training_progresses():
    # the same validation curve; training still falling fast in the first strip, flat in the second
    val = [1.0, 0.8, 0.7, 0.74, 0.75, 0.76, 0.77, 0.78, 0.79, 0.80]
    fast = [2.0, 1.5, 1.0, 0.7, 0.5, 0.49, 0.49, 0.49, 0.49, 0.49]
    crit = ProgressQuotient(alpha=0.5, strip=5)
    stop = feed(crit, val, fast)
    # strip end 5: GL = 7.14, P_5 = 1000 (5.7 / (5 * 0.5) - 1) = 1280 -> 0.0056; strip end 10: P_5 = 0 -> stop
    assert stop == 10
    assert crit.training_progress() == pytest.approx(0.0)
    c2 = ProgressQuotient(alpha=0.5, strip=5)
    feed(c2, val[:5], fast[:5])
    assert c2.training_progress() == pytest.approx(1000 * (sum(fast[:5]) / (5 * 0.5) - 1))
    # GL alone (alpha 5) stops at epoch 4 (0.74 / 0.7: 5.7%)
    assert feed(GeneralizationLoss(alpha=5.0), val) == 4


def test_up_s_needs_s_successive_rising_strips():
    # strip k=2: strip ends at epochs 2, 4, 6, 8: values 0.9, 0.5, 0.6, 0.7 -> rises at 6 and at 8
    val = [1.0, 0.9, 0.6, 0.5, 0.55, 0.6, 0.65, 0.7]
    assert feed(UpStrips(s=1, strip=2), val) == 6
    assert feed(UpStrips(s=2, strip=2), val) == 8
    assert feed(UpStrips(s=3, strip=2), val) is None
    # a rise inside a strip that is gone at its end does not count
    assert feed(UpStrips(s=1, strip=2), [1.0, 0.9, 1.5, 0.8, 2.0, 0.7]) is None


def test_criteria_on_accuracy_use_the_error_and_round_trip_their_state():
    crit = EARLY_STOPPING.get("gl")(alpha=10.0, monitor="val_accuracy")
    for t, acc in enumerate([0.5, 0.8, 0.79], start=1):
        assert not crit.update(t, {"val_accuracy": acc})
    assert crit.best_epoch == 2
    assert crit.update(4, {"val_accuracy": 0.77}) is True      # error 0.23 vs 0.2: GL 15% > 10
    again = EARLY_STOPPING.get("gl")(alpha=10.0, monitor="val_accuracy")
    again.load_state_dict(crit.state_dict())
    assert again.val_errors == crit.val_errors and again.best_epoch == 2
    with pytest.raises(ValueError, match="alpha"):
        EARLY_STOPPING.get("pq")(alpha=0)
    with pytest.raises(ValueError, match="strip"):
        EARLY_STOPPING.get("up")(strip=0)
    with pytest.raises(KeyError, match="train_loss"):
        ProgressQuotient().update(1, {"val_loss": 1.0})


def test_gl_stops_a_real_overfitting_run_and_restores_the_best_epoch(tiny_cfg):
    from traintricks.training import build_trainer
    cfg = tiny_cfg("epochs=40", "data.limit=150", "lr=0.1", "schedule.name=constant", "data.augment=[]",
                   "loss.label_smoothing=0.0", "optim.weight_decay=0.0",
                   "early_stopping.name=gl", "early_stopping.alpha=5.0",
                   "model.pool_before_norm=false")   # this layout overfits 150 digits within 40 epochs
    t = build_trainer(cfg, progress=False)
    s = t.fit()
    assert s["stopped_early"] and s["epochs"] < 40
    losses = [r["val_loss"] for r in t.history]
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    assert s["best_epoch"] == best and losses[-1] > 1.05 * losses[best - 1]
    assert s["restored_best"]


# ------------------------------------------------------------------------------------------------ EMA
from traintricks.evaluation import ModelEMA  # noqa: E402


def test_ema_follows_its_recurrence_and_warmup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.9, warmup=False)
    expected = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(p, e)
    assert not any(p.requires_grad for p in ema.module.parameters())
    warm = ModelEMA(model, decay=0.999, warmup=True)
    assert [warm.current_decay() for _ in range(1)] == [pytest.approx(1 / 10)]
    warm.updates = 90
    assert warm.current_decay() == pytest.approx(91 / 100)
    warm.updates = 10 ** 6
    assert warm.current_decay() == 0.999
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)
    with pytest.raises(ValueError, match="bn"):
        ModelEMA(model, bn="average")


@pytest.mark.parametrize("ours", [False, True], ids=["torch-bn", "traintricks-bn"])
def test_ema_recompute_bn_estimates_the_statistics_of_the_averaged_weights(ours):
    from traintricks.nn import BatchNorm1d
    torch.manual_seed(0)
    bn = BatchNorm1d(4) if ours else torch.nn.BatchNorm1d(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), bn)
    ema = ModelEMA(model, decay=0.5, warmup=False, bn="recompute", bn_batches=3)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)                     # averaged weights differ from both the initial and the live ones
    batches = [torch.randn(16, 3) for _ in range(5)]
    assert ema.recompute_bn(iter(batches)) == 3
    with torch.no_grad():
        h = [ema.module[0](x) for x in batches[:3]]
    mean = torch.stack([a.mean(0) for a in h]).mean(0)
    var = torch.stack([a.var(0, unbiased=True) for a in h]).mean(0)
    torch.testing.assert_close(ema.module[1].running_mean, mean)
    torch.testing.assert_close(ema.module[1].running_var, var)
    assert not ema.module.training
    assert ema.module[1].momentum == pytest.approx(model[1].momentum)        # the rate is put back


def test_regression_issue15_item12_recompute_bn_takes_xy_batches_and_a_dataloader_as_update_bn():
    from torch.optim.swa_utils import update_bn
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ModelEMA(model, decay=0.5, warmup=False, bn_batches=1000)
    data = TensorDataset(torch.randn(64, 3), torch.randint(0, 2, (64,)))
    loader = DataLoader(data, batch_size=16)
    assert ema.recompute_bn(loader) == 4                           # (x, y) batches of a torch DataLoader
    twin = __import__("copy").deepcopy(ema.module)
    update_bn(loader, twin)
    torch.testing.assert_close(ema.module[1].running_mean, twin[1].running_mean)
    torch.testing.assert_close(ema.module[1].running_var, twin[1].running_var)
    from traintricks.data import TensorLoader
    assert ema.recompute_bn(TensorLoader(data.tensors[0], data.tensors[1], 16), device="cpu", max_batches=2) == 2


def test_regression_issue15_item12_early_stopping_restores_the_best_weights_in_a_plain_loop():
    from traintricks.evaluation import EarlyStopping
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2, restore_best=True)
    losses = [1.0, 0.5, 0.7, 0.9, 0.3]
    stopped = None
    for epoch, val in enumerate(losses):                     # epochs counted from 0, as a user may
        with torch.no_grad():
            model.weight.fill_(float(epoch))                 # "training": the weights tell the epoch
        if stopper.update(epoch, {"val_loss": val}, model):
            stopped = epoch
            break
    assert stopped == 3 and stopper.best_epoch == 1
    assert torch.equal(model.weight, torch.full((1, 2), 1.0))     # the best epoch's weights are back
    # a criterion of Prechelt's and a plain number as the record; restore() when the loop just ends
    gl = GeneralizationLoss(alpha=50.0)
    for epoch, val in enumerate([1.0, 0.4, 0.5]):
        with torch.no_grad():
            model.weight.fill_(10.0 + epoch)
        assert not gl.update(epoch, val, model)
    assert gl.best_epoch == 1 and gl.restore(model) and torch.equal(model.weight, torch.full((1, 2), 11.0))
    assert not EarlyStopping().restore(model)                # nothing kept without a model


def test_trainer_evaluates_and_saves_the_ema_weights(tiny_cfg, tmp_path):
    import json
    from traintricks.training import build_trainer, run
    from traintricks.training import checkpoint as ckpt
    t = build_trainer(tiny_cfg("ema.decay=0.8", "ema.bn=copy"), progress=False)
    t.fit()
    assert t.ema.updates == 2 * len(t.train_loader)
    live = {k: v.clone() for k, v in t.model.state_dict().items()}
    got = t.evaluate(t.test_loader)
    t.model.load_state_dict(t.ema.state_dict())          # the EMA weights in the live model: same numbers
    assert t.ema.module.state_dict().keys() == live.keys()
    t.ema = None
    t.eval_forward = t.model
    assert t.evaluate(t.test_loader) == pytest.approx(got)
    summary = run(tiny_cfg("ema.decay=0.8"), tmp_path / "r", progress=False)
    saved = ckpt.load_weights(tmp_path / "r" / "model.safetensors")
    last = ckpt.latest_checkpoint(tmp_path / "r" / "checkpoints")
    ema_saved = ckpt.load_weights(last / "ema.safetensors")
    assert all(torch.equal(saved[k], ema_saved[k]) for k in saved)       # the model written is the EMA
    assert summary["test_accuracy"] > 0.5 and json.loads((tmp_path / "r" / "summary.json").read_text())
    from traintricks.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="ema.decay"):
        load_config(overrides=["ema.decay=1.5"])
    with pytest.raises(ConfigError, match="ema.window"):
        load_config(overrides=["ema.window=3"])


# ------------------------------------------------------------------------------------- bag of tricks
def test_bag_of_tricks_is_one_switch_that_explicit_settings_override():
    from traintricks.config import load_config
    cfg = load_config(overrides=["bag_of_tricks=true"])
    assert cfg["model"]["zero_init_residual"] and cfg["optim"]["decay_norm_and_bias"] is False
    assert cfg["schedule"] == {"name": "cosine", "warmup_epochs": 1.0}
    assert cfg["loss"]["label_smoothing"] == 0.1
    cfg = load_config(overrides=["bag_of_tricks=true", "schedule.name=onecycle", "loss.label_smoothing=0.05"])
    assert cfg["schedule"]["name"] == "onecycle" and "warmup_epochs" not in cfg["schedule"]
    assert cfg["loss"]["label_smoothing"] == 0.05 and cfg["model"]["zero_init_residual"]
    assert "zero_init_residual" not in load_config()["model"]


def test_zero_init_makes_every_residual_block_the_identity_and_still_learns():
    from traintricks.models import MODELS, zero_init_residual
    torch.manual_seed(0)
    model = MODELS.get("preact_resnet")((1, 16, 16), 10, blocks=[2, 1], widths=[4, 8])
    blocks = [m for m in model.modules() if hasattr(m, "branch")]
    assert zero_init_residual(model) == len(blocks) > 0
    for b in blocks:
        if b.shortcut is None:
            x = torch.randn(2, b.pre[0].num_features, 8, 8)
            torch.testing.assert_close(b(x), x)                  # the branch adds exactly 0 at initialization
    # and it still learns: the zeroed layer gets a non-zero gradient (zeroing gamma before a ReLU would not)
    model(torch.randn(8, 1, 16, 16)).logsumexp(1).sum().backward()
    last = blocks[0].branch[-1]
    assert torch.count_nonzero(last.weight) == 0 and last.weight.grad.abs().sum() > 0
    plain = MODELS.get("preact_resnet")((1, 16, 16), 10, blocks=[2, 1], widths=[4, 8])
    assert all(torch.count_nonzero(b.branch[-1].weight) > 0 for b in plain.modules() if hasattr(b, "branch"))


# ---------------------------------------------------------------------------------------- curriculum
from traintricks.data import CURRICULA, CurriculumLoader  # noqa: E402


@pytest.mark.parametrize("kind", ["linear", "root", "exponential", "step"])
def test_pacing_functions_start_at_g0_reach_all_data_at_T_and_never_shrink(kind):
    g = CURRICULA.get(kind)(start=0.1, full_at=0.5, steps=4, scores="x")
    ts = [i / 100 for i in range(101)]
    vals = [g(t) for t in ts]
    assert vals[0] == pytest.approx(0.1) and vals[50] == pytest.approx(1.0) and vals[-1] == 1.0
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    expected = {"linear": 0.1 + 0.9 * 0.5, "root": math.sqrt(0.01 + 0.99 * 0.5), "exponential": 0.1 * 10 ** 0.5,
                "step": 0.1 + 0.9 * 2 / 4}[kind]
    assert g(0.25) == pytest.approx(expected)


def test_pacing_rejects_bad_options():
    with pytest.raises(ValueError, match="start"):
        CURRICULA.get("linear")(start=0.0, scores="x")
    with pytest.raises(ValueError, match="exactly one"):
        CURRICULA.get("linear")()
    with pytest.raises(ValueError, match="exactly one"):
        CURRICULA.get("linear")(scores="a", reference="b")


def test_curriculum_loader_draws_from_the_easiest_examples_first():
    n, bs, epochs = 1000, 50, 4
    x, y = torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))          # easiest first
    rank_of = torch.empty(n, dtype=torch.long)
    rank_of[order] = torch.arange(n)
    pacing = CURRICULA.get("linear")(start=0.2, full_at=0.5, scores="x")
    loader = CurriculumLoader(x, y, bs, order, pacing, epochs, drop_last=True)
    assert len(loader) == n // bs                                 # epochs keep their length
    seen_max = []
    for e in range(epochs):
        loader.set_epoch(e)
        for b, (xb, _) in enumerate(loader):
            ranks = rank_of[xb[:, 0].long()]
            assert ranks.max() < loader.available(e, b)             # never beyond the paced pool
            seen_max.append(ranks.max().item())
    assert seen_max[0] < 0.2 * n + 1 and max(seen_max[-10:]) > 0.9 * n   # easy first, everything at the end
    # the same seed gives the same batches; two ranks split each global batch
    loader.set_epoch(0)
    a = [xb for xb, _ in loader]
    loader.set_epoch(0)
    assert all(torch.equal(p, q) for p, (q, _) in zip(a, loader))
    r0 = CurriculumLoader(x, y, bs // 2, order, pacing, epochs, drop_last=True, rank=0, world_size=2)
    r1 = CurriculumLoader(x, y, bs // 2, order, pacing, epochs, drop_last=True, rank=1, world_size=2)
    both = torch.cat([next(iter(r0))[0], next(iter(r1))[0]])
    assert torch.equal(both, a[0])


def test_curriculum_from_a_reference_run_and_from_a_scores_file(tiny_cfg, tmp_path):
    from safetensors.torch import save_file
    from traintricks.config import ConfigError
    from traintricks.training import build_trainer, run
    run(tiny_cfg("epochs=2"), tmp_path / "ref", progress=False)
    t = build_trainer(tiny_cfg("curriculum.name=root", f"curriculum.reference={tmp_path / 'ref'}"), progress=False)
    loader = t.train_loader
    assert isinstance(loader, CurriculumLoader)
    from traintricks.data.curriculum import reference_scores
    from traintricks.training.recipe import load_run_model
    ref, _ = load_run_model(tmp_path / "ref")
    scores = reference_scores(ref, loader.x, loader.y)
    assert scores[loader.order[:50]].mean() < scores[loader.order[-50:]].mean()     # easy = low reference loss
    assert t.fit()["test_accuracy"] > 0.5
    n = len(loader.x)
    save_file({"scores": torch.arange(n, dtype=torch.float32)}, str(tmp_path / "s.safetensors"))
    t = build_trainer(tiny_cfg("curriculum.name=linear", f"curriculum.scores={tmp_path / 's.safetensors'}"),
                      progress=False)
    assert torch.equal(t.train_loader.order, torch.arange(n))
    save_file({"scores": torch.arange(n - 1, dtype=torch.float32)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match=f"has {n - 1} scores"):
        build_trainer(tiny_cfg("curriculum.name=linear", f"curriculum.scores={tmp_path / 'bad.safetensors'}"))
    with pytest.raises(ConfigError, match="curriculum.reference"):
        build_trainer(tiny_cfg("curriculum.name=linear", f"curriculum.reference={tmp_path / 'nothing'}"))
    from traintricks.config import load_config
    with pytest.raises(ConfigError, match="curriculum.start"):
        load_config(overrides=["curriculum.start=0.3"])


# ------------------------------------------------------------------------------------------------ lab
def test_lab_lists_the_claims_and_runs_them_writing_verdicts_and_plots(tmp_path, capsys):
    import json
    from traintricks.cli import main
    from traintricks.evaluation.lab import CLAIMS
    assert main(["lab"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in CLAIMS) and len(CLAIMS) >= 15
    assert listing.count("criterion:") == len(CLAIMS)
    out = tmp_path / "lab"
    names = ["gn_train_eval", "batch_memory_noise", "checkpointing", "newton_saddle", "huber_outliers"]
    assert main(["lab", *names, "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--quick: a plumbing check on tiny data, not a verdict") == len(names)
    for name in names:
        v = json.loads((out / f"{name}.json").read_text())
        assert v["claim"] == name and v["verdict"] in ("HOLDS", "DOES NOT HOLD", "INCONCLUSIVE")
        assert isinstance(v["holds"], bool) and v["holds"] == (v["verdict"] == "HOLDS")
        assert v["summary"] in printed and f"{name}: {v['verdict']}" in printed
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert v["seeds"] == [0, 1, 2] and set(v["precisions"]) == {"fp32", "bf16"}
        for p, res in v["precisions"].items():
            assert len(res["runs"]) == 3 and [r["seed"] for r in res["runs"]] == [0, 1, 2]
            for key, c in res["criteria"].items():      # every seed's value, the mean and the interval
                assert c["values"] == [r["criteria"][key] for r in res["runs"]]
                assert c["low"] <= c["mean"] <= c["high"] and c["status"] in ("holds", "fails", "undecided")
    gn = json.loads((out / "gn_train_eval.json").read_text())
    # exact properties, whatever the scale: GN ignores the batch, BN in training mode does not
    assert gn["verdict"] == "HOLDS"
    for p in ("fp32", "bf16"):
        assert all(r["numbers"]["groupnorm"]["max_diff_train_vs_eval_batch2"] < 1e-4 for r in gn["precisions"][p]["runs"])
    mem = json.loads((out / "batch_memory_noise.json").read_text())["precisions"]["fp32"]["runs"][0]["numbers"]
    assert [r["batch_size"] for r in mem] == [16, 64, 256]
    assert mem[0]["saved_mb"] < mem[1]["saved_mb"] < mem[2]["saved_mb"]
    ck = json.loads((out / "checkpointing.json").read_text())["precisions"]["fp32"]["runs"][0]["numbers"]["rows"]
    assert ck[1]["saved_mb"] < ck[0]["saved_mb"]                    # recomputed segments save activations
    hub = json.loads((out / "huber_outliers.json").read_text())["precisions"]["fp32"]["runs"]
    assert all(r["numbers"]["test_rmse"]["huber"][2] < r["numbers"]["test_rmse"]["mse"][2] for r in hub)
    assert main(["lab", "bogus"]) == 2
    assert "unknown claim" in capsys.readouterr().err
    assert main(["lab", "huber_outliers", "--seeds", "0", "--out", str(out)]) == 2
    assert "seeds must be >= 1" in capsys.readouterr().err


def test_lab_usable_rate_interpolates_where_the_accuracy_crosses_the_bar():
    from traintricks.evaluation.lab.claims import usable_rate
    lrs = (0.03, 0.1, 0.3, 1.0)
    # 0.8 at 0.1 falls to 0.4 at 0.3; the bar 0.72 is a fifth of the way down: 0.1 x 3 ** 0.2
    assert usable_rate(lrs, [0.7, 0.8, 0.4, 0.1], 0.72) == pytest.approx(0.1 * 3 ** 0.2)
    assert usable_rate(lrs, [0.7, 0.8, 0.72, 0.1], 0.72) == pytest.approx(0.3)        # exactly at the bar
    assert usable_rate(lrs, [0.7, 0.8, 0.8, 0.79], 0.72) == 1.0                      # the grid's end (censored)
    # not monotone: the largest rate at or above the bar counts (0.3, not 0.03)
    assert usable_rate(lrs, [0.8, 0.1, 0.75, 0.1], 0.72) == pytest.approx(0.3 * (1 / 0.3) ** (0.03 / 0.65))


def test_lab_interval_decides_with_a_two_standard_error_margin():
    from traintricks.evaluation.lab import interval
    s = interval([1.0, 2.0, 3.0])                   # mean 2, sd 1, se 1/sqrt(3): 2 - 2 x 0.577 > 0
    assert s["mean"] == 2.0 and abs(s["sd"] - 1.0) < 1e-12 and abs(s["se"] - 3 ** -0.5) < 1e-12
    assert (s["min"], s["max"]) == (1.0, 3.0) and s["status"] == "holds"
    assert interval([-1.0, -2.0, -3.0])["status"] == "fails"
    assert interval([-1.0, 2.0, 3.0])["status"] == "undecided"     # the seeds disagree more than the effect
    assert interval([0.5, 0.5, 0.5])["status"] == "holds"          # no spread: the sign decides
    assert interval([0.0, 0.0, 0.0])["status"] == "undecided"
    assert interval([1.0])["status"] == "undecided"                # one seed shows no spread
    assert interval([1.0, float("nan"), 2.0])["status"] == "undecided"


def test_lab_verdict_is_inconclusive_when_a_criterion_is_undecided_or_the_precisions_disagree(tmp_path,
                                                                                                monkeypatch):
    import json
    from traintricks.evaluation import lab as L
    from traintricks.evaluation.lab import FAILS, HOLDS, INCONCLUSIVE, Claim, Criterion, Lab, decide, run_claim
    from traintricks.evaluation.lab.core import combine
    assert decide({"a": {"status": "holds"}, "b": {"status": "holds"}}) == HOLDS
    assert decide({"a": {"status": "holds"}, "b": {"status": "undecided"}}) == INCONCLUSIVE
    assert decide({"a": {"status": "fails"}, "b": {"status": "undecided"}}) == FAILS
    assert combine({"fp32": HOLDS, "bf16": HOLDS})[0] == HOLDS
    v, why = combine({"fp32": HOLDS, "bf16": FAILS})
    assert v == INCONCLUSIVE and "fp32 HOLDS" in why and "bf16 DOES NOT HOLD" in why

    def experiment(lab):        # holds under fp32 by a margin, reversed under bf16
        sign = 1.0 if lab.precision == "fp32" else -1.0
        return {"criteria": {"effect": sign * (1.0 + 0.1 * lab.run_seed)}, "numbers": {"seed": lab.run_seed}}
    monkeypatch.setitem(L.CLAIMS, "fake", Claim("fake", "A fake claim.", "a test", "none", experiment,
                                                [Criterion("effect", "effect > 0")], task=None))
    v = run_claim("fake", Lab(out=tmp_path, seed=5))
    assert v["verdict"] == INCONCLUSIVE and "precisions disagree" in v["reason"]
    assert v["precisions"]["fp32"]["verdict"] == HOLDS and v["precisions"]["bf16"]["verdict"] == FAILS
    saved = json.loads((tmp_path / "fake.json").read_text())
    assert saved["seeds"] == [5, 6, 7]
    assert saved["precisions"]["fp32"]["criteria"]["effect"]["values"] == pytest.approx([1.5, 1.6, 1.7])
    assert (tmp_path / "fake.png").exists()
    v = run_claim("fake", Lab(out=tmp_path, precisions=("fp32",), seeds=4))
    assert v["verdict"] == HOLDS and len(v["precisions"]["fp32"]["runs"]) == 4
    with pytest.raises(ValueError, match="precisions"):
        Lab(out=tmp_path, precisions=("fp16",))
    # a claim's own seed count (Claim.seeds): at least that many, more with --seeds, exactly --seeds with --quick
    monkeypatch.setitem(L.CLAIMS, "fake", Claim("fake", "A fake claim.", "a test", "none", experiment,
                                                [Criterion("effect", "effect > 0")], task=None, seeds=5))
    assert run_claim("fake", Lab(out=tmp_path, precisions=("fp32",), seed=2))["seeds"] == [2, 3, 4, 5, 6]
    assert len(run_claim("fake", Lab(out=tmp_path, precisions=("fp32",), seeds=7))["seeds"]) == 7
    assert run_claim("fake", Lab(out=tmp_path, precisions=("fp32",), quick=True, seeds=2))["seeds"] == [0, 1]


def test_recompute_bn_skips_norms_without_running_statistics_as_update_bn():
    # InstanceNorm2d (no running statistics by default) and a BN with track_running_stats=False beside a plain BN:
    # update_bn handles them; recompute_bn must too, and give update_bn's statistics for the plain BN
    import copy
    from torch import nn
    from traintricks.evaluation import ModelEMA
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    ema = ModelEMA(model, decay=0.9)
    assert ema.recompute_bn(batches) == 3
    ref = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn(batches, ref)
    torch.testing.assert_close(ema.module[3].running_mean, ref[3].running_mean)
    torch.testing.assert_close(ema.module[3].running_var, ref[3].running_var)


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("val_accuracy", "max"), ("val_micro_f1", "max"),
                                           ("val_r2", "max"), ("val_rmse", "min"), ("val_auc", "max"),
                                           ("train_loss", "min"), ("val_exact_match", "max")])
def test_early_stopping_mode_follows_the_metric_name(monitor, mode):
    from traintricks.evaluation import EarlyStopping
    assert EarlyStopping(monitor=monitor).mode == mode


def test_early_stopping_asks_for_mode_when_the_name_does_not_say():
    from traintricks.evaluation import EarlyStopping
    with pytest.raises(ValueError, match="mode="):
        EarlyStopping(monitor="val_score")
    assert EarlyStopping(monitor="val_score", mode="max").mode == "max"
