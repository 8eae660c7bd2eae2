"""Hogwild! (Niu, Recht, Ré & Wright 2011, arXiv:1106.5730): lock-free asynchronous SGD on one machine.

The model's parameters live in shared memory (``torch.multiprocessing``, ``Tensor.share_memory_``); K worker
processes each train on their own shard of every epoch's permutation (the data-parallel sharding of
:class:`~traintricks.data.TensorLoader`) and write their updates into the shared parameters without locks.
Sparse or weakly-coupled updates rarely collide; dense ones do, and the result is a non-deterministic but
convergent SGD. Each worker keeps its own optimizer state (momentum buffers). The main process waits, then
evaluates; a worker that dies is reported and the others finish the run. A Hogwild run is not resumable mid-run
(no consistent snapshot exists while workers write); it is checkpointed at its end.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from .workers import join_workers


def _worker(rank: int, workers: int, build: Callable[..., Any], model: torch.nn.Module, threads: int) -> None:
    torch.set_num_threads(threads)
    code = 0
    try:
        trainer = build(model=model, shard=(rank, workers))
        trainer.fit()
    except BaseException:                       # noqa: BLE001 - reported through the exit code
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code)


def run_hogwild(build: Callable[..., Any], model: torch.nn.Module, workers: int,
                timeout: float | None = None) -> list[int]:
    """Train ``model`` (moved to shared memory) with ``workers`` Hogwild processes; returns their exit codes (a
    failed worker is warned about, not fatal).

    ``build(model=model, shard=(rank, workers))`` makes each worker's trainer (anything with ``fit()``) on that
    share of every batch; it is pickled to the spawned workers, so a module-level function or a
    ``functools.partial`` of one (the recipe passes ``partial(build_trainer, cfg, progress=False,
    evaluate=False)``: this package never imports the recipe)."""
    if workers < 1:
        raise ValueError(f"parallel.workers must be >= 1, got {workers}")
    model.share_memory()
    threads = max(1, torch.get_num_threads() // workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, workers, build, model, threads)) for r in range(workers)]
    for p in procs:
        p.start()
    return join_workers(procs, timeout, "Hogwild worker")
