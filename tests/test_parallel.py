import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import PRECISION
from traintricks.config import load_config
from traintricks.data import TensorLoader

CFG = ["data.name=digits", "epochs=2", "data.augment=[]", "eval.tta_flip=false", f"precision={PRECISION}",
       "model.name=mlp", "model.hidden=[32]", "model.norm=none", "batch_size=64", "lr=0.05",
       "schedule.name=constant", "data.val_size=0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, cfg: list | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from traintricks.parallel import cleanup, setup_distributed
    from traintricks.training import build_trainer
    code = 0
    try:
        info = setup_distributed("cpu")
        assert info.world_size == world and info.rank == rank
        trainer = build_trainer(load_config(overrides=cfg or CFG), progress=False)
        summary = trainer.fit()
        if rank == 0:
            torch.save({"state": trainer.model.state_dict(), "summary": summary,
                        "batches": len(trainer.train_loader)}, out)
        cleanup()
    except BaseException:      # noqa: BLE001 - report through the exit code
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code)             # (gloo can abort at interpreter exit after destroy_process_group)


def test_loader_shards_each_global_batch_between_ranks():
    x, y = torch.arange(20.0).view(20, 1), torch.arange(20)
    full = TensorLoader(x, y, 4, shuffle=True, seed=3, drop_last=True)
    parts = [TensorLoader(x, y, 2, shuffle=True, seed=3, drop_last=True, rank=r, world_size=2) for r in (0, 1)]
    assert len(full) == len(parts[0]) == len(parts[1]) == 5
    for (fx, _), (ax, _), (bx, _) in zip(full, *parts):
        assert torch.equal(fx, torch.cat([ax, bx]))
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(x, y, 2, rank=2, world_size=2)


SYNC_BN = [kv for kv in CFG if kv != "model.norm=none"] + ["model.norm=batchnorm", "parallel.sync_batchnorm=true"]


@pytest.mark.parametrize("cfg", [CFG, SYNC_BN], ids=["no-norm", "sync-batchnorm"])
def test_two_processes_batch_b_equal_one_process_batch_2b(tmp_path, cfg):
    """DDP on loopback (gloo): 2 processes x 32 examples == 1 process x 64 examples, after 2 epochs; with batch
    norm too when its statistics are synchronized."""
    from traintricks.training import build_trainer
    cfg = [*cfg, "precision=fp32"]      # equal to rtol 1e-5: bf16 rounds a 32-example gradient unlike a 64-example one
    out = str(tmp_path / "ddp.pt")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, out, cfg)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a worker did not finish in time"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    ddp = torch.load(out, weights_only=False)
    single = build_trainer(load_config(overrides=cfg), progress=False)
    summary = single.fit()
    assert ddp["batches"] == len(single.train_loader)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-5, atol=1e-6)
    assert ddp["summary"]["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=2e-3)


def test_torchrun_cli_two_processes_rank0_writes(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    exe = shutil.which("traintricks", path=os.path.dirname(sys.executable))
    if torchrun is None or exe is None:
        pytest.skip("torchrun / traintricks scripts not installed in this environment")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={_free_port()}", "--no-python", exe, "train",
           "--out", str(out), "--no-progress"] + [a for kv in CFG for a in ("--set", kv)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["test_accuracy"] > 0.5
    assert res.stdout.count("test_accuracy") == 1                     # only rank 0 reports


def test_hogwild_workers_train_a_shared_model_from_the_cli(tmp_path):
    import json
    from traintricks.cli import main
    out = tmp_path / "hog"
    args = ["train", "--out", str(out), "--no-progress", "--set", "parallel.mode=hogwild", "--set", "parallel.workers=2"]
    args += [a for kv in CFG if not kv.startswith("epochs") for a in ("--set", kv)] + ["--set", "epochs=3"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parallel"] == "hogwild" and summary["workers"] == 2 and summary["failed_workers"] == []
    assert summary["test_accuracy"] > 0.8
    assert (out / "model.safetensors").is_file()
    from traintricks.config import ConfigError
    with pytest.raises(ConfigError, match="parallel.mode"):
        load_config(overrides=["parallel.mode=downpour"])


def test_gradient_accumulation_equals_one_big_batch():
    from traintricks.training import build_trainer
    fp32 = CFG + ["precision=fp32"]     # equal to rtol 1e-5: bf16 rounds a 32-example gradient unlike a 64-example one
    one = build_trainer(load_config(overrides=fp32), progress=False)
    one.fit()
    acc = build_trainer(load_config(overrides=fp32 + ["accumulate_steps=2"]), progress=False)
    assert acc.train_loader.batch_size == 32 and len(acc.train_loader) == 2 * len(one.train_loader)
    acc.fit()
    for (k, a), b in zip(acc.model.state_dict().items(), one.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    from traintricks.config import ConfigError
    with pytest.raises(ConfigError, match="batch_size"):
        build_trainer(load_config(overrides=CFG + ["accumulate_steps=5"]), progress=False)


@pytest.mark.parametrize("dc, fail", [(0.0, None), (0.5, "2:5")], ids=["downpour", "dc-asgd-with-a-crashed-worker"])
def test_async_parameter_server_from_the_cli(tmp_path, dc, fail):
    import json
    import subprocess
    import sys
    out = tmp_path / "async"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fail:
        env["TRAINTRICKS_ASYNC_FAIL"] = fail
    sets = [kv for kv in CFG] + ["parallel.mode=async", "parallel.workers=2", f"parallel.dc_lambda={dc}"]
    cmd = [sys.executable, "-m", "traintricks.cli", "train", "--out", str(out), "--no-progress"]
    cmd += [a for kv in sets for a in ("--set", kv)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parallel"] == "async" and summary["test_accuracy"] > 0.8
    assert summary["updates"] > 0 and summary["mean_staleness"] >= 0
    if fail:
        assert summary["failed_workers"] == [1] and "stopped early" in res.stderr     # worker rank 2 = index 1
    else:
        assert summary["failed_workers"] == []


def test_async_server_checkpoints_each_epoch_and_a_restarted_run_continues(tmp_path):
    """Both workers crash in epoch 2: the run fails, but the server's epoch-1 checkpoint holds its version, the
    staleness record and each worker's step; ``--resume`` applies exactly the updates that were left."""
    import json
    import subprocess
    import sys
    from traintricks.training import checkpoint as ckpt
    out = tmp_path / "async"
    sets = [kv for kv in CFG if not kv.startswith("schedule")] + [
        "parallel.mode=async", "parallel.workers=2", "schedule.name=cosine"]
    base = [sys.executable, "-m", "traintricks.cli", "train", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINTRICKS_ASYNC_FAIL": "1:30,2:30"}
    res = subprocess.run(base + ["--out", str(out)] + [a for kv in sets for a in ("--set", kv)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode != 0 and "every asynchronous worker failed" in res.stderr
    assert not (out / "summary.json").exists()
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None and last.name == "epoch-0001"
    state = ckpt.load_state(last / "state.pt")
    server = state["extra"]["async"]
    per_epoch = server["version"] // 2                        # batches per worker per epoch
    assert server["version"] == sum(server["progress"].values()) == len(server["staleness"]) > 0
    # the schedule advanced once per global batch (2 pushes): cosine at half its span, from lr / 2 workers
    lr = state["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.05 / 2 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)
    env.pop("TRAINTRICKS_ASYNC_FAIL")
    res = subprocess.run(base + ["--resume", str(out)], capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["failed_workers"] == []
    assert summary["updates"] == 2 * 2 * per_epoch              # 2 epochs x 2 workers x batches: none lost or redone
    assert summary["test_accuracy"] > 0.8
