import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import PRECISION
from traintricks.config import load_config
from traintricks.data import TensorLoader

CFG = ["data.name=digits", "epochs=2", "data.augment=[]", "callbacks=[]", f"precision={PRECISION}",
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


def _two_node_job(tmp_path, args_a: list[str], args_b: list[str], timeout: float = 120):
    """Start two ``torchrun`` agents, "node A" and "node B", each ``--nnodes=2 --nproc-per-node=1`` with a c10d
    rendezvous on loopback, running ``traintricks <args>``; wait for both (killing both process groups after
    ``timeout`` seconds) and return their ``CompletedProcess``-like results."""
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import uuid
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    exe = shutil.which("traintricks", path=os.path.dirname(sys.executable))
    if torchrun is None or exe is None:
        pytest.skip("torchrun / traintricks scripts not installed in this environment")
    port, run_id = _free_port(), f"tt-{uuid.uuid4().hex[:12]}"
    # loopback only: the rendezvous store, the workers' store (--local-addr) and gloo's sockets (GLOO_SOCKET_IFNAME)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs, logs = [], []
    for node, host, args in (("a", 1, args_a), ("b", 0, args_b)):
        cmd = [torchrun, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}", f"--rdzv-conf=is_host={host}",
               "--local-addr=127.0.0.1", "--max-restarts=0", "--no-python", exe, *args]
        log = (tmp_path / f"{run_id}-{node}.out", tmp_path / f"{run_id}-{node}.err")    # files: no pipe to fill
        with open(log[0], "w") as out, open(log[1], "w") as err:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True,
                                          cwd=tmp_path))
        logs.append(log)
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)    # the agent and its worker: a hang fails instead of blocking
                p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, o.read_text(), e.read_text())
            for p, (o, e) in zip(procs, logs)]


def test_two_torchrun_nodes_equal_one_process_with_the_whole_batch(tmp_path):
    """``--nnodes=2`` (one process per node, c10d rendezvous on loopback, gloo): global rank 0, whichever node the
    rendezvous makes it, writes the run; the other node writes nothing; the final weights and metrics equal one
    process with the whole batch (fp32). Then ``--resume`` of that run directory on two nodes, from its epoch-1
    checkpoint, ends where the uninterrupted run did."""
    import json
    import shutil
    from traintricks.training import checkpoint as ckpt
    from traintricks.training.recipe import run
    cfg = [*CFG, "precision=fp32"]
    sets = [a for kv in cfg for a in ("--set", kv)]
    out_a, out_b = tmp_path / "node_a" / "run", tmp_path / "node_b" / "run"     # each "machine" its own disk
    results = _two_node_job(tmp_path, ["train", "--out", str(out_a), "--no-progress", *sets],
                            ["train", "--out", str(out_b), "--no-progress", *sets])
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    written = [o for o in (out_a, out_b) if o.exists()]
    assert len(written) == 1, "exactly one node (global rank 0's) writes the run directory"
    out = written[0]
    assert sum(r.stdout.count("test_accuracy") for r in results) == 1          # only global rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2

    single = run(load_config(overrides=cfg), tmp_path / "single", progress=False)
    ref = ckpt.load_weights(tmp_path / "single" / "model.safetensors")
    got = ckpt.load_weights(out / "model.safetensors")
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    assert summary["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=2e-3)
    assert summary["epochs"] == single["epochs"] == 2

    # resume on two nodes from a run directory both can read (a shared filesystem): roll the run back to epoch 1
    shared = tmp_path / "shared" / "run"
    shutil.copytree(out, shared)
    shutil.rmtree(shared / "checkpoints" / "epoch-0002")
    for name in ("summary.json", "model.safetensors"):
        (shared / name).unlink()
    results = _two_node_job(tmp_path, ["train", "--resume", str(shared), "--no-progress"],
                            ["train", "--resume", str(shared), "--no-progress"])
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    resumed = json.loads((shared / "summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["processes"] == 2 and resumed["epochs"] == 2
    assert (shared / "checkpoints" / "epoch-0002").is_dir()
    epochs = [json.loads(line)["epoch"] for line in (shared / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    got = ckpt.load_weights(shared / "model.safetensors")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


def test_two_node_resume_refuses_run_directories_that_differ_between_machines(tmp_path):
    """A multi-machine ``--resume`` where node B's copy of the run directory is stale (an older latest checkpoint):
    every process stops with the same clear error naming the ranks that differ, instead of training from state
    other than rank 0's. (A machine without the directory at all takes the same path: its config digest is None.)"""
    import shutil
    from traintricks.training.recipe import run
    a = tmp_path / "node_a" / "run"
    run(load_config(overrides=[*CFG, "precision=fp32"]), a, progress=False)
    (a / "summary.json").unlink()
    b = tmp_path / "node_b" / "run"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "epoch-0002")
    results = _two_node_job(tmp_path, ["train", "--resume", str(a), "--no-progress"],
                            ["train", "--resume", str(b), "--no-progress"])
    for r in results:
        assert r.returncode != 0
        assert "traintricks: error:" in r.stderr and "do not see the same run directory" in r.stderr, r.stderr[-3000:]
        assert "shared filesystem" in r.stderr and "rank(s) [1] differ from rank 0" in r.stderr
    assert not (a / "summary.json").exists()
