"""Asynchronous SGD with a parameter server on ``torch.distributed.rpc`` (Downpour SGD, Dean et al. 2012),
with optional delay compensation (DC-ASGD, Zheng et al. 2017, arXiv:1609.08326).

The main process is the server (rpc rank 0): it owns the model and any traintricks optimizer. K worker processes
(rpc ranks 1..K) each loop over their shard of every epoch: **pull** the current parameters (and the server's
version number), compute the gradient of one mini-batch, **push** it. The server applies each gradient as it
arrives, under a lock, and records its **staleness** ``tau`` = updates applied since that worker pulled. A stale
gradient ``g(w_old)`` is applied at ``w_now``; DC-ASGD corrects it to first order with the diagonal
approximation of the Hessian, ``g + lam * g * g * (w_now - w_old)``, the server keeping each worker's pulled
``w_old``. Batch-norm buffers travel with the gradients (the server keeps the latest).

A worker that dies is reported and the others finish the run (the server never waits on a dead worker: it
joins processes, not messages).
"""
from __future__ import annotations

import os
import socket
import threading
import warnings
from typing import Any

import torch
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp

_SERVER: "ParameterServer | None" = None


class ParameterServer:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dc_lambda: float = 0.0) -> None:
        self.model, self.optimizer, self.dc_lambda = model, optimizer, float(dc_lambda)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lock = threading.Lock()
        self.version = 0
        self.staleness: list[int] = []
        self.pulled: dict[int, list[torch.Tensor]] = {}

    def pull(self, worker: int) -> tuple[int, list[torch.Tensor], list[torch.Tensor]]:
        with self.lock:
            params = [p.detach().clone() for p in self.params]
            if self.dc_lambda:
                self.pulled[worker] = params
            return self.version, params, [b.detach().clone() for b in self.model.buffers()]

    def push(self, worker: int, version: int, grads: list[torch.Tensor], buffers: list[torch.Tensor]) -> int:
        with self.lock:
            tau = self.version - version
            self.staleness.append(tau)
            if self.dc_lambda and worker in self.pulled:
                grads = [g + self.dc_lambda * g * g * (p.detach() - w) for g, p, w in
                         zip(grads, self.params, self.pulled[worker])]
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            with torch.no_grad():
                for b, nb in zip(self.model.buffers(), buffers):
                    b.copy_(nb)
            self.version += 1
            return tau


def _pull(worker: int):
    return _SERVER.pull(worker)


def _push(worker: int, version: int, grads, buffers):
    return _SERVER.push(worker, version, grads, buffers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict[str, Any], fail_after: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world)
        from ..training.recipe import build_trainer
        trainer = build_trainer(cfg, progress=False, shard=(rank - 1, world - 1), evaluate=False)
        model, loss_fn = trainer.model, trainer.loss_fn
        params = [p for p in model.parameters() if p.requires_grad]
        steps = 0
        for epoch in range(cfg["epochs"]):
            trainer.train_loader.set_epoch(epoch)
            for x, y in trainer.train_loader:
                version, w, bufs = rpc.rpc_sync("server", _pull, args=(rank,))
                with torch.no_grad():
                    for p, v in zip(params, w):
                        p.copy_(v)
                    for b, v in zip(model.buffers(), bufs):
                        b.copy_(v)
                model.train()
                for p in params:
                    p.grad = None
                x, y = trainer._to_device(x, y)
                with trainer._autocast():
                    loss = loss_fn(model(x), y)
                loss.backward()
                rpc.rpc_sync("server", _push, args=(rank, version, [p.grad.detach().clone() for p in params],
                                                    [b.detach().clone() for b in model.buffers()]))
                steps += 1
                if fail_after is not None and steps >= fail_after:
                    os._exit(3)                          # a simulated crash: no clean shutdown
        # not graceful: a graceful shutdown waits for every agent, and the server is waiting on the processes
        rpc.shutdown(graceful=False)
    except BaseException:                               # noqa: BLE001 - reported through the exit code
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code)


def run_async(cfg: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, workers: int,
              dc_lambda: float = 0.0, timeout: float | None = None,
              fail: dict[int, int] | None = None) -> dict[str, Any]:
    """Serve ``model`` to ``workers`` asynchronous worker processes until they finish; returns the staleness
    record and the workers' exit codes. ``fail={rank: steps}`` makes that worker crash after that many steps
    (to test the fault handling)."""
    global _SERVER
    if workers < 1:
        raise ValueError(f"parallel.workers must be >= 1, got {workers}")
    world = workers + 1
    port = _free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _SERVER = ParameterServer(model, optimizer, dc_lambda)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, world, port, cfg, (fail or {}).get(r))) for r in range(1, world)]
    for p in procs:
        p.start()
    rpc.init_rpc("server", rank=0, world_size=world)
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    rpc.shutdown(graceful=False)
    failed = [r + 1 for r, c in enumerate(codes) if c != 0]
    if failed and len(failed) < workers:
        warnings.warn(f"asynchronous workers {failed} stopped early (exit codes "
                      f"{[codes[r - 1] for r in failed]}); the others finished the run", stacklevel=2)
    elif failed:
        raise RuntimeError(f"every asynchronous worker failed (exit codes {codes})")
    server, _SERVER = _SERVER, None
    return {"updates": server.version, "staleness": server.staleness, "exit_codes": codes, "failed_workers": failed}
