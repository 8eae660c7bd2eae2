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

Learning-rate schedule: one global batch is ``workers`` pushes (each worker's batch is ``batch_size / workers``),
so the server steps the run's scheduler once every ``workers`` updates and the schedule spans the run as in a
synchronous one. Checkpoints: each time the updates reach a whole number of epochs (``workers x batches per
worker per epoch``), the server writes the run's checkpoint (model, optimizer, scheduler, its version, the
staleness record and every worker's step count) through the trainer; ``--resume`` restarts every worker at its own
step, so the restarted run applies exactly the updates that were left.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable

import torch
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp

from .workers import join_workers

_SERVER: "ParameterServer | None" = None


class ParameterServer:
    """The server's state and its two remote methods. ``scheduler`` is stepped every ``steps_per_update``
    pushes; ``on_epoch(server)`` is called (under the lock) each time the version reaches a multiple of
    ``updates_per_epoch`` (the run's checkpoint)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dc_lambda: float = 0.0,
                 scheduler: Any = None, steps_per_update: int = 1, updates_per_epoch: int = 0,
                 on_epoch: Callable[["ParameterServer"], None] | None = None) -> None:
        self.model, self.optimizer, self.dc_lambda = model, optimizer, float(dc_lambda)
        self.scheduler, self.steps_per_update = scheduler, max(1, int(steps_per_update))
        self.updates_per_epoch, self.on_epoch = int(updates_per_epoch), on_epoch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lock = threading.Lock()
        self.version = 0
        self.staleness: list[int] = []
        self.progress: dict[int, int] = {}          # worker rank -> gradients it has pushed
        self.pulled: dict[int, list[torch.Tensor]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "staleness": list(self.staleness),
                "progress": {str(k): v for k, v in self.progress.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version = int(state["version"])
        self.staleness = [int(t) for t in state["staleness"]]
        self.progress = {int(k): int(v) for k, v in state["progress"].items()}

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
            self.progress[worker] = self.progress.get(worker, 0) + 1
            if self.scheduler is not None and self.version % self.steps_per_update == 0:
                self.scheduler.step()
            if self.on_epoch is not None and self.updates_per_epoch and self.version % self.updates_per_epoch == 0:
                self.on_epoch(self)
            return tau


def _pull(worker: int):
    return _SERVER.pull(worker)


def _push(worker: int, version: int, grads, buffers):
    return _SERVER.push(worker, version, grads, buffers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, build: Callable[..., Any], fail_after: int | None,
            start: int = 0) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world)
        trainer = build(shard=(rank - 1, world - 1))
        model, loss_fn = trainer.model, trainer.loss_fn
        params = [p for p in model.parameters() if p.requires_grad]
        steps = 0
        per_epoch = len(trainer.train_loader)
        for epoch in range(start // per_epoch, trainer.epochs):
            trainer.train_loader.set_epoch(epoch)
            for b, (x, y) in enumerate(trainer.train_loader):
                if epoch * per_epoch + b < start:        # a resumed run: these were pushed before the restart
                    continue
                version, w, bufs = rpc.rpc_sync("server", _pull, args=(rank,))
                with torch.no_grad():
                    for p, v in zip(params, w):
                        p.copy_(v)
                    for b, v in zip(model.buffers(), bufs):
                        b.copy_(v)
                model.train()
                for p in params:
                    p.grad = None
                x, y = trainer.to_device(x, y)
                with trainer.autocast():
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


def run_async(build: Callable[..., Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, workers: int,
              dc_lambda: float = 0.0, timeout: float | None = None,
              fail: dict[int, int] | None = None, scheduler: Any = None, updates_per_epoch: int = 0,
              on_epoch: Callable[[ParameterServer], None] | None = None,
              state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Serve ``model`` to ``workers`` asynchronous worker processes until they finish; returns the staleness
    record and the workers' exit codes. ``build(shard=(rank, workers))`` makes a worker's
    :class:`~traintricks.training.Trainer` on its share of every batch (its model, loss, loader, ``epochs``,
    ``to_device`` and ``autocast`` are used); it is pickled to the spawned workers, so a module-level function or a
    ``functools.partial`` of one (the recipe passes ``partial(build_trainer, cfg, progress=False,
    evaluate=False)``: this package never imports the recipe). ``scheduler`` is stepped once per ``workers`` updates; ``on_epoch``
    (e.g. a checkpoint) runs each ``updates_per_epoch`` updates; ``state`` (a saved
    :meth:`ParameterServer.state_dict`) continues an interrupted run, each worker from its own step.
    ``fail={rank: steps}`` makes that worker crash after that many steps (to test the fault handling)."""
    global _SERVER
    if workers < 1:
        raise ValueError(f"parallel.workers must be >= 1, got {workers}")
    world = workers + 1
    port = _free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _SERVER = ParameterServer(model, optimizer, dc_lambda, scheduler, workers, updates_per_epoch, on_epoch)
    if state is not None:
        _SERVER.load_state_dict(state)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, world, port, build, (fail or {}).get(r), _SERVER.progress.get(r, 0)))
             for r in range(1, world)]
    for p in procs:
        p.start()
    rpc.init_rpc("server", rank=0, world_size=world)
    try:
        codes = join_workers(procs, timeout, "asynchronous worker", first_rank=1)
    finally:
        rpc.shutdown(graceful=False)
    failed = [r + 1 for r, c in enumerate(codes) if c != 0]
    server, _SERVER = _SERVER, None
    return {"updates": server.version, "staleness": server.staleness, "exit_codes": codes, "failed_workers": failed,
            "progress": dict(server.progress)}
