"""Weight averaging: AveragedModel and recompute_bn against torch.optim.swa_utils, the SWA callback side by side
with AveragedModel + SWALR + update_bn in a plain loop (constant/annealed and cyclic rates), exact resume, the
config, checkpoint averaging (the callback and `traintricks average`), and the errors."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.optim import swa_utils

from traintricks.evaluation.averaging import (SWA, AveragedModel, CheckpointAverage, average_state_dicts,
                                              recompute_bn)
from traintricks.callback import Callback
from traintricks.training import Trainer


def _problem(seed=0, n=96, batch=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    return model, batches


class LrRecorder(Callback):
    name = "lr_recorder"

    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, params):
        self.lrs.append([g["lr"] for g in trainer.optimizer.param_groups])


def _close(a: dict, b: dict, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)


# ------------------------------------------------------------------------------------------- drop-in pieces
@pytest.mark.parametrize("use_buffers", [False, True])
def test_averaged_model_equals_torch_averaged_model(use_buffers):
    model, batches = _problem()
    ours, theirs = AveragedModel(model, use_buffers=use_buffers), swa_utils.AveragedModel(model, use_buffers=use_buffers)
    for i in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(batches[i][0])                   # move the BN buffers
        ours.update_parameters(model)
        theirs.update_parameters(model)
    assert int(ours.n_averaged) == int(theirs.n_averaged) == 4
    a, b = ours.state_dict(), theirs.state_dict()
    if use_buffers:        # torch adds a fraction to integer buffers; ours copies num_batches_tracked
        a = {k: v for k, v in a.items() if "num_batches" not in k}
        b = {k: v for k, v in b.items() if "num_batches" not in k}
    _close(a, b, rtol=1e-6, atol=1e-7)


def test_recompute_bn_equals_update_bn_and_restores_mode_and_momentum():
    model, batches = _problem()
    ref = copy.deepcopy(model)
    model.eval()
    assert recompute_bn(model, batches) == len(batches)
    assert not model.training and model[1].momentum == 0.1
    swa_utils.update_bn(batches, ref)
    _close(dict(model.named_buffers()), dict(ref.named_buffers()), rtol=1e-5, atol=1e-6)
    it = iter(batches)
    assert recompute_bn(model, it, max_batches=2) == 2
    assert len(list(it)) == len(batches) - 2             # no third batch drawn
    assert recompute_bn(nn.Linear(6, 2), batches) == 0


def test_average_state_dicts_averages_floats_and_keeps_the_last_integers():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7), "h": torch.tensor([2.0], dtype=torch.float16)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and int(out["n"]) == 7
    assert out["h"].dtype == torch.float16 and float(out["h"]) == 1.5
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])
    with pytest.raises(ValueError, match="other keys"):
        average_state_dicts([a, {"w": a["w"], "n": a["n"]}])
    with pytest.raises(ValueError, match="'w' has shape"):
        average_state_dicts([a, {**a, "w": torch.zeros(3)}])


# ------------------------------------------------------------------------------------------- SWA in the loop
def _torch_swa_loop(model, batches, epochs, s, swa_lr, anneal_epochs, strategy, lam):
    """The plain loop of torch's documentation with AveragedModel + SWALR + update_bn."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    avg, swa_sched, lrs = swa_utils.AveragedModel(model), None, []
    if s == 0:
        swa_sched = swa_utils.SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    for n in range(1, epochs + 1):
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            lrs.append([g["lr"] for g in opt.param_groups])
            opt.step()
            if n <= s:
                sched.step()
        if n == s:
            swa_sched = swa_utils.SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
        if n > s:
            avg.update_parameters(model)
            swa_sched.step()
    swa_utils.update_bn(batches, avg)
    return avg, lrs


@pytest.mark.parametrize("s,anneal_epochs,strategy", [(2, 2, "cos"), (1, 0, "linear"), (0, 3, "linear")])
def test_swa_callback_equals_averaged_model_swalr_and_update_bn(s, anneal_epochs, strategy):
    lam = lambda t: 1.0 / (1.0 + 0.1 * t)                # noqa: E731  a per-step main schedule
    model, batches = _problem()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    swa = SWA(model, swa_start=s, swa_lr=0.02, anneal_epochs=anneal_epochs, anneal_strategy=strategy)
    rec = LrRecorder()
    tr = Trainer(model, opt, nn.CrossEntropyLoss(), batches, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lam),
                 scheduler_interval="step", epochs=6, callbacks=[swa, rec], progress=False, precision="fp32")
    summary = tr.fit()
    avg, lrs = _torch_swa_loop(ref, batches, 6, s, 0.02, anneal_epochs, strategy, lam)
    assert [r[0] for r in rec.lrs] == pytest.approx([r[0] for r in lrs], rel=1e-12)
    _close(dict(model.named_parameters()), dict(ref.named_parameters()), rtol=1e-5, atol=1e-6)
    assert swa.n_averaged == int(avg.n_averaged) == 6 - s and summary["swa_averaged"] == 6 - s
    _close(swa.averaged.module.state_dict(), avg.module.state_dict(), rtol=1e-5, atol=1e-6)
    assert tr.eval_model is swa.averaged.module
    assert tr.history[-1]["swa_averaged"] == 6 - s


def test_swa_cyclic_rate_and_averages_at_cycle_ends():
    model, batches = _problem()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = SWA(model, swa_start=1, swa_lr=0.01, cycle_epochs=2, bn="copy")
    snapshots = []

    class Snap(Callback):
        def on_train_epoch_end(self, trainer, record):
            snapshots.append(copy.deepcopy(trainer.model.state_dict()))
    rec = LrRecorder()
    Trainer(model, opt, nn.CrossEntropyLoss(), batches, epochs=5, callbacks=[Snap(), swa, rec], progress=False,
            precision="fp32").fit()
    S = 2 * len(batches)                                 # steps per cycle
    expect = [0.1] * len(batches) + [(1 - i / S) * 0.1 + i / S * 0.01 for _ in range(2) for i in range(1, S + 1)]
    assert [r[0] for r in rec.lrs] == pytest.approx(expect, rel=1e-12)
    assert swa.n_averaged == 2                           # the ends of epochs 3 and 5
    mean = average_state_dicts([snapshots[2], snapshots[4]])
    for k, v in swa.averaged.module.state_dict().items():
        if "running" in k or "num_batches" in k:          # bn="copy": the live model's statistics
            torch.testing.assert_close(v, snapshots[4][k])
        else:
            torch.testing.assert_close(v, mean[k], rtol=1e-5, atol=1e-6)
    del ref


def test_swa_resumes_exactly(tmp_path):
    def make(out):
        model, batches = _problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        swa = SWA(model, swa_start=1, swa_lr=0.05, anneal_epochs=2)
        return Trainer(model, opt, nn.CrossEntropyLoss(), batches, val_loader=batches[:2], epochs=5,
                       callbacks=[swa], progress=False, precision="fp32", out_dir=out), swa
    ref, ref_swa = make(tmp_path / "a")
    ref.fit()
    first, _ = make(tmp_path / "b")
    first.epochs = 3
    first.fit()
    resumed, swa = make(tmp_path / "b")
    resumed.resume()
    assert swa.n_averaged == 2 and resumed.eval_model is swa.averaged.module
    resumed.fit()
    for k, v in ref_swa.averaged.module.state_dict().items():
        assert torch.equal(v, swa.averaged.module.state_dict()[k]), k
    assert [r["val_loss"] for r in ref.history] == [r["val_loss"] for r in resumed.history]


def test_swa_from_the_config_is_evaluated_saved_and_reported(tiny_cfg, tmp_path):
    from safetensors.torch import load_file
    from traintricks.training import run
    summary = run(tiny_cfg('callbacks=[{name = "swa", swa_start = 1, swa_lr = 0.05, bn_batches = 3}]', "epochs=3"),
                  tmp_path / "run", progress=False)
    assert summary["swa_averaged"] == 2
    assert "last_weights_test_accuracy" in summary and 0 <= summary["test_accuracy"] <= 1
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    swa_file = load_file(str(tmp_path / "run" / "checkpoints" / "epoch-0003" / "swa.safetensors"))
    for k, v in saved.items():
        assert torch.equal(v, swa_file[k]), k
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("swa_averaged") for m in metrics] == [None, 1, 2]
    assert "stochastic weight averaging of 2 models (the last weights: test accuracy" in \
        (tmp_path / "run" / "report.md").read_text()


def test_swa_refuses_bad_settings(tiny_cfg):
    from traintricks.config import ConfigError
    from traintricks.evaluation import ModelEMA
    from traintricks.training import build_trainer
    model, batches = _problem()
    with pytest.raises(ValueError, match="set swa_lr"):
        SWA(model, cycle_epochs=2)
    with pytest.raises(ValueError, match="bn must be"):
        SWA(model, bn="ema")
    with pytest.raises(ValueError, match="anneal_strategy"):
        SWA(model, anneal_strategy="step")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"swa_start \(4\) must be below the run's epochs \(4\)"):
        Trainer(model, opt, nn.CrossEntropyLoss(), batches, epochs=4, callbacks=[SWA(model, swa_start=4)],
                progress=False, precision="fp32")
    with pytest.raises(ValueError, match="already the evaluated model"):
        Trainer(model, opt, nn.CrossEntropyLoss(), batches, epochs=4, ema=ModelEMA(model),
                callbacks=[SWA(model, swa_start=1)], progress=False, precision="fp32")
    with pytest.raises(ConfigError, match=r"callbacks\[0\].swa_lr"):
        tiny_cfg('callbacks=[{name = "swa", swa_lr = "high"}]')
    with pytest.raises(ConfigError, match=r"callbacks\[0\]"):
        build_trainer(tiny_cfg('callbacks=[{name = "swa", swa_lr = -1.0}]'), progress=False)


def test_swa_default_start_is_three_quarters_of_the_run():
    model, batches = _problem()
    swa = SWA(model)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), batches, epochs=8,
            callbacks=[swa], progress=False, precision="fp32").fit()
    assert swa.start == 6 and swa.n_averaged == 2


# ------------------------------------------------------------------------------------- checkpoint averaging
@pytest.mark.parametrize("bn", ["average", "recompute"])
def test_checkpoint_average_callback_averages_the_last_k_epochs(bn):
    model, batches = _problem()
    snaps = []

    class Snap(Callback):
        def on_epoch_end(self, trainer, record):
            snaps.append(copy.deepcopy(trainer.model.state_dict()))
    cb = CheckpointAverage(k=3, bn=bn)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss(), batches,
                 test_loader=batches[:2], epochs=5, callbacks=[Snap(), cb], progress=False, precision="fp32")
    summary = tr.fit()
    assert summary["checkpoint_average_k"] == 3
    assert summary["last_weights_test_loss"] == tr.history[-1]["test_loss"]
    expect = average_state_dicts(snaps[-3:])
    if bn == "recompute":
        ref = copy.deepcopy(model)
        ref.load_state_dict(expect)
        swa_utils.update_bn(batches, ref)
        expect = {**expect, **{k: v for k, v in ref.state_dict().items() if "running" in k}}
    got = model.state_dict()
    for k, v in expect.items():
        if "num_batches" in k and bn == "recompute":
            continue
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert int(got["1.num_batches_tracked"]) == (len(batches) if bn == "recompute" else 5 * len(batches))
    assert summary["test_loss"] != summary["last_weights_test_loss"]      # re-evaluated with the average


def test_checkpoint_average_resumes_exactly(tmp_path):
    def make(out):
        model, batches = _problem()
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), batches, epochs=4,
                       callbacks=[CheckpointAverage(k=3)], progress=False, precision="fp32", out_dir=out)
    ref = make(tmp_path / "a")
    ref.fit()
    first = make(tmp_path / "b")
    first.epochs = 2
    first.fit()
    resumed = make(tmp_path / "b")
    resumed.resume()
    resumed.fit()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_average_command_averages_the_last_k_checkpoints(tiny_cfg, tmp_path, capsys):
    from safetensors.torch import load_file
    from traintricks.cli import main
    from traintricks.training import run
    run(tiny_cfg("epochs=3", "keep_checkpoints=0"), tmp_path / "run", progress=False)
    ck = tmp_path / "run" / "checkpoints"
    assert main(["average", str(tmp_path / "run"), "--last", "2"]) == 0
    out = tmp_path / "run" / "model-avg-last2.safetensors"
    got = load_file(str(out))
    a, b = load_file(str(ck / "epoch-0002" / "model.safetensors")), load_file(str(ck / "epoch-0003" / "model.safetensors"))
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a[k].double() + b[k].double()).div(2).float(), rtol=0, atol=0)
        else:
            assert torch.equal(v, b[k])
    result = json.loads((tmp_path / "run" / "model-avg-last2.json").read_text())
    assert result["checkpoints"] == ["epoch-0002", "epoch-0003"] and result["evaluated"] is True
    assert 0 <= result["average_test_accuracy"] <= 1 and 0 <= result["last_test_accuracy"] <= 1
    assert math.isfinite(result["average_test_loss"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["evaluated"] is True
    # with recomputed statistics, into another file
    assert main(["average", str(tmp_path / "run"), "--last", "3", "--bn", "recompute", "--out",
                 str(tmp_path / "avg3.safetensors")]) == 0
    assert (tmp_path / "avg3.safetensors").is_file() and not list(tmp_path.glob(".avg3*"))
    # not enough checkpoints
    assert main(["average", str(tmp_path / "run"), "--last", "4", "--no-eval"]) == 2
    assert "fewer than --last 4" in capsys.readouterr().err


def test_average_command_names_a_missing_run_directory(tmp_path, capsys):
    # a new user was told about "0 complete checkpoints" for a directory that does not exist
    from traintricks.cli import main
    assert main(["average", str(tmp_path / "nonexist"), "--last", "2"]) == 2
    assert "not a traintricks run directory" in capsys.readouterr().err
