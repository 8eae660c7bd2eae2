import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PRECISION, TINY
from traintricks.cli import main
from traintricks.catalog import all_registries
from traintricks.training import checkpoint as ckpt


def cli(*args, cwd=None):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "traintricks", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def sets(*extra):
    return [a for kv in [*TINY, *extra] for a in ("--set", kv)]


def test_list_prints_every_registered_name(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for reg in all_registries():
        for name in reg.names():
            assert f"  {name} " in out, (reg.kind, name)


def test_config_errors_name_the_key_before_any_work(tmp_path, capsys):
    assert main(["train", "--set", "optim.momentom=0.5", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "optim.momentom" in err and "options:" in err
    assert not (tmp_path / "r").exists()
    assert main(["train", "--set", "epochs=-1", "--out", str(tmp_path / "r")]) == 2
    assert "'epochs'" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "Fashion-MNIST not found" in capsys.readouterr().err


def test_cli_train_kill_and_resume_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = cli("train", *sets("epochs=3"), "--out", str(a), "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 3 and summary["test_accuracy"] > 0.5
    r = cli("train", *sets("epochs=3"), "--out", str(b), "--no-progress")
    assert r.returncode == 0, r.stderr
    # make b look like a run killed during epoch 3: its last checkpoint, final weights and summary never written
    shutil.rmtree(b / "checkpoints" / "epoch-0003")
    for f in ("summary.json", "model.safetensors"):
        (b / f).unlink()
    r = cli("train", *sets("epochs=3"), "--out", str(b))
    assert r.returncode == 2 and "--resume" in r.stderr                 # refuses to overwrite the run
    r = cli("train", "--resume", str(b), "--no-progress")
    assert r.returncode == 0, r.stderr
    wa, wb = ckpt.load_weights(a / "model.safetensors"), ckpt.load_weights(b / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert json.loads((a / "summary.json").read_text())["test_accuracy"] == \
        json.loads((b / "summary.json").read_text())["test_accuracy"]
    assert len((b / "metrics.jsonl").read_text().splitlines()) == 3


def test_diverging_run_exits_with_message(tmp_path):
    r = cli("train", *sets("epochs=2", "lr=1e30", "model.norm=\"none\"", "schedule.name=constant"),
            "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 1 and "loss became" in r.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_resume_refuses_overrides(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--set", "epochs=5"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    import signal
    import time

    args = sets("epochs=6", "data.limit=1200")
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("train", *args, "--out", str(a), "--no-progress").returncode == 0
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "traintricks", "train", *args, "--out", str(b), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (b / "checkpoints" / "epoch-0002").exists():
        time.sleep(0.005)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert killed_mid_run, "the run finished before it could be killed"
    assert ckpt.latest_checkpoint(b / "checkpoints").name in ("epoch-0002", "epoch-0003")
    assert not (b / "summary.json").exists()
    r = cli("train", "--resume", str(b), "--no-progress")
    assert r.returncode == 0, r.stderr
    wa, wb = ckpt.load_weights(a / "model.safetensors"), ckpt.load_weights(b / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist") and not os.environ.get("TRAINTRICKS_DATA"),
                    reason="Fashion-MNIST not installed")
def test_default_recipe_runs_end_to_end_on_a_fashion_mnist_subset(tmp_path, capsys):
    # the default recipe (at the tests' PRECISION, channels-last, two one-cycles, crop+flip and flip TTA from the
    # second) on 3,000 images, its 26 epochs shrunk to 2 (1 + 1: cycle lengths scale with the run);
    # batches of 64 with the rate scaled linearly from the recipe's 0.4 at 512
    assert main(["train", "--set", "data.limit=3000", "--set", "epochs=2", "--set", "batch_size=64",
                 "--set", "lr=0.05", "--set", "data.augment_from_epoch=1", "--set", f"precision={PRECISION}",
                 "--out", str(tmp_path),
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist" and summary["epochs"] == 2
    assert summary["test_accuracy"] > 0.7        # 10 classes: chance is 0.1
    # the machine probe's record (off in the tests: channels-last by the static rule, compile off)
    assert summary["probe"]["source"] == "off" and summary["probe"]["channels_last"] is True
    assert summary["probe"]["compile"] is False
    cfg = (tmp_path / "config.toml").read_text()
    assert 'name = "fashion_mnist"' in cfg and "limit = 3000" in cfg


def test_report_renders_a_finished_run(tmp_path, capsys):
    import json
    from traintricks.cli import main
    out = tmp_path / "run"
    # flip augmentation and flip TTA from epoch 1 on (as the default recipe does from its second cycle), the shift
    # views after training: the recomputed accuracy must use the TTA the run's final evaluation used (ten views)
    sets = ["data.name=digits", "epochs=2", "model.widths=[8, 16]", "model.blocks=[1, 1]",
            'callbacks=[{name = "progressive_resizing", sizes = [6], epochs = [1]}, "tta_flip", "tta_shift"]',
            'data.augment=["flip", "crop"]', "data.augment_from_epoch=1", "precision=fp32", "batch_size=64", "lr=0.1",
            "schedule.min_warmup_steps=0"]      # the cycles' own peaks, uncapped on this short run (issue 15 item 13)
    assert main(["train", "--out", str(out), "--no-progress"] + [a for kv in sets for a in ("--set", kv)]) == 0
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    for part in ("Confusion matrix", "Per-class accuracy", "Learning-rate schedule", "Gradient-norm history",
                 "data:image/png;base64,"):
        assert part in html
    rep = json.loads((out / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    conf = rep["confusion"]
    total = sum(map(sum, conf))
    from traintricks.config import load_config
    from traintricks.training import build_trainer
    t = build_trainer(load_config(out / "config.toml"), progress=False)
    assert total == len(t.test_loader.x)                              # every test example, once
    assert sum(conf[i][i] for i in range(10)) / total == pytest.approx(summary["test_accuracy"])
    assert rep["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert summary["tta_views"] == 10 and "tta_views" in html
    md = (out / "report.md").read_text()
    assert "the mean of 10 test-time views" in md and "| image size |" in md
    assert [line.rsplit("|", 2)[-2].strip() for line in md.splitlines() if line.startswith("| 1 |") or
            line.startswith("| 2 |")] == ["6", "8"]          # epoch 1 on 6x6 images, epoch 2 at the digits' 8x8
    assert len(rep["lr_per_step"]) == 2 * len(t.train_loader)
    assert 0.09 < max(rep["lr_per_step"]) <= 0.1 and rep["lr_per_step"][0] <= 0.0100001   # one-cycle from lr/10 up to lr
    for png in ("confusion.png", "per_class.png", "lr_schedule.png", "grad_norm.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "config.toml not found" in capsys.readouterr().err


def test_compare_runs_every_variant_over_seeds_and_writes_one_report(tmp_path, capsys):
    from traintricks.evaluation.compare import split_values
    assert split_values("[16, 32],[8, 16]") == ["[16, 32]", "[8, 16]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    from traintricks.evaluation.compare import variants
    assert variants([("lr", ["1", "2"]), ("model.norm", ["a", "b"])]) == [
        {"lr": "1", "model.norm": "a"}, {"lr": "1", "model.norm": "b"}, {"lr": "2", "model.norm": "a"},
        {"lr": "2", "model.norm": "b"}]
    out = tmp_path / "cmp"
    sets = [a for kv in TINY if not kv.startswith("epochs") for a in ("--set", kv)] + ["--set", "epochs=2"]
    code = main(["compare", "--vary", "model.norm=batchnorm,none", "--seeds", "2", "--jobs", "2", "--out", str(out)]
                + sets)
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert [v["variant"] for v in result["variants"]] == ["model.norm=batchnorm", "model.norm=none"]
    for v in result["variants"]:
        assert v["finished"] == 2 and len(v["per_seed_test_accuracy"]) == 2
        accs = v["per_seed_test_accuracy"]
        assert v["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
        assert v["test_accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
        assert v["peak_rss_mb_mean"] > 50 and v["train_seconds_mean"] > 0
    assert {r["seed"] for r in result["runs"]} == {0, 1}
    run_dir = out / "model.norm=none" / "seed-1"
    assert json.loads((run_dir / "summary.json").read_text())["seed"] == 1
    html = (out / "report.html").read_text()
    assert "mean ± std" in html and html.count("data:image/png;base64,") == 2
    # a bad value fails before anything runs, naming the key
    capsys.readouterr()
    assert main(["compare", "--vary", "model.norm=batchnorm,bogus", "--out", str(tmp_path / "bad")] + sets) == 2
    assert "model.norm" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_an_error_found_while_building_the_run_leaves_no_run_directory(tmp_path):
    # a factory's range error (found when the run is built, after the config's own checks) names its key and
    # writes nothing: no half run directory holding only config.toml
    out = tmp_path / "run"
    r = cli("train", "--set", "data.name=digits", "--set", "optim.momentum=1.5", "--out", str(out), "--no-progress")
    assert r.returncode == 2 and "optim.momentum" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("dataset, metric", [("diabetes", "test_rmse"), ("digits_multilabel", "test_micro_f1")])
def test_regression_and_multilabel_runs_train_and_report_their_task_metrics(tmp_path, dataset, metric):
    import json
    from tests.conftest import PRECISION
    out = tmp_path / "run"
    model = ["--set", "model.name=mlp"] if dataset == "diabetes" else []
    r = cli("train", "--set", f"data.name={dataset}", *model, "--set", "data.augment=[]", "--set", "callbacks=[]",
            "--set", "epochs=2", "--set", f"precision={PRECISION}", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert metric in printed and "test_accuracy" not in printed and "test_accuracy" not in summary
    assert summary["task"] in ("regression", "multilabel") and summary[metric] == printed[metric]
    assert 'name = "cross_entropy"' not in (out / "config.toml").read_text()   # the loss that was trained
    r = cli("report", str(out))
    assert r.returncode == 0, r.stderr
    html = (out / "report.html").read_text()
    assert metric.removeprefix("test_") in html and "confusion" not in html.lower()


def test_a_loss_chosen_for_another_task_is_refused_naming_the_key(tmp_path):
    r = cli("train", "--set", "data.name=diabetes", "--set", "model.name=mlp", "--set", "loss.label_smoothing=0.0",
            "--set", "callbacks=[]", "--set", "data.augment=[]", "--out", str(tmp_path / "r"), "--no-progress")
    assert r.returncode == 2 and "loss.name" in r.stderr and "regression" in r.stderr


def test_a_callback_named_twice_is_a_config_error():
    r = cli("config", "--set", 'callbacks=["ema", "ema"]')
    assert r.returncode == 2 and "callbacks[1]" in r.stderr


def test_config_toml_records_every_option_so_a_run_reloads_as_it_trained(tmp_path):
    # switching model.name away and back drops the default recipe's pool_before_norm=true; the run trains with
    # the class default (false). config.toml must say so, else reloading it (report, resume) builds another model
    from tests.conftest import PRECISION
    out = tmp_path / "run"
    r = cli("train", "--set", "data.name=digits", "--set", "model.name=mlp", "--set", "model.name=cnn",
            "--set", "model.widths=[8, 16]", "--set", "model.blocks=[1, 1]", "--set", "epochs=1",
            "--set", "callbacks=[]", "--set", "data.augment=[]", "--set", f"precision={PRECISION}",
            "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "pool_before_norm = false" in (out / "config.toml").read_text()
    r = cli("report", str(out))
    assert r.returncode == 0, r.stderr


def test_resume_combined_with_set_is_refused_as_a_flag_not_a_config_key(tmp_path, capsys):
    # a new user read "config key '--resume'" for a command-line flag
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues a run exactly as configured" in err and "config key" not in err
