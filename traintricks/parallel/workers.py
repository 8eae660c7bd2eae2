"""Waiting for spawned worker processes (Hogwild, asynchronous SGD) and the shared failure policy."""
from __future__ import annotations

from typing import Sequence

from ..errors import warn


def join_workers(procs: Sequence, timeout: float | None, what: str, first_rank: int = 0) -> list[int]:
    """Join ``procs`` (killing any still alive after ``timeout`` seconds) and return their exit codes. Workers that
    failed while others finished are warned about, naming their ranks (``first_rank`` + index); if every worker
    failed, ``RuntimeError``. ``what`` names them, e.g. ``"Hogwild worker"``."""
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    failed = [i for i, c in enumerate(codes) if c != 0]
    if failed and len(failed) < len(procs):
        warn(f"{what}s {[first_rank + i for i in failed]} stopped early (exit codes "
             f"{[codes[i] for i in failed]}); the others finished the run")
    elif failed:
        raise RuntimeError(f"every {what} failed (exit codes {codes})")
    return codes
