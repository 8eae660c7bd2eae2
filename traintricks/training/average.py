"""``traintricks average RUN_DIR --last k``: the average of a run's last ``k`` checkpoints (Popel & Bojar 2018,
arXiv:1804.00247; :func:`~traintricks.evaluation.averaging.average_state_dicts`), written atomically and evaluated
on the run's test split when its data can be loaded.

The checkpoints are read from ``RUN_DIR/checkpoints/`` (every complete one, per-epoch and per-step, oldest first:
train with ``keep_checkpoints = 0`` or ``>= k`` to keep them, and ``checkpoint_every_steps`` for checkpoints inside
epochs); only ``model.safetensors`` files (safetensors: no code is unpickled) and the run's ``config.toml``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, load_config
from ..evaluation.averaging import average_state_dicts, recompute_bn
from . import checkpoint as ckpt


def average_run(run_dir: str | os.PathLike, last: int, out: str | os.PathLike | None = None, bn: str = "average",
                evaluate: bool = True) -> dict[str, Any]:
    """Average the weights of the last ``last`` checkpoints of ``run_dir`` into ``out`` (default
    ``RUN_DIR/model-avg-last{k}.safetensors``, written under a temporary name and renamed); with ``evaluate``,
    rebuild the run's model and data from its ``config.toml`` and measure the average (batch-norm statistics
    averaged, or re-estimated over the training data with ``bn="recompute"``) and the last checkpoint's weights on
    the test split. Returns (and writes beside ``out`` as ``<out stem>.json``) what was done.

    Raises :class:`~traintricks.training.checkpoint.CheckpointError` naming the directory when it holds fewer than
    ``last`` complete checkpoints, ``ValueError`` for ``last < 1`` or an unknown ``bn``."""
    if last < 1:
        raise ValueError(f"--last must be >= 1, got {last}")
    if bn not in ("average", "recompute"):
        raise ValueError(f"--bn must be 'average' or 'recompute', got {bn!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ckpt.CheckpointError(f"{run_dir}: not a traintricks run directory (no config.toml"
                                   f"{'' if run_dir.is_dir() else '; the directory does not exist'})")
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    if len(found) < last:
        raise ckpt.CheckpointError(
            f"{run_dir / 'checkpoints'}: {len(found)} complete checkpoint(s), fewer than --last {last}; a run keeps "
            "its 2 most recent by default: train with --set keep_checkpoints=0 (all) or >= k")
    chosen = found[-last:]
    states = [ckpt.load_weights(p / "model.safetensors") for p in chosen]
    avg = average_state_dicts(states)
    out = Path(out) if out is not None else run_dir / f"model-avg-last{last}.safetensors"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    ckpt.save_weights(avg, tmp, {"averaged": ",".join(p.name for p in chosen)})
    os.replace(tmp, out)
    result: dict[str, Any] = {"run": str(run_dir), "out": str(out), "checkpoints": [p.name for p in chosen],
                              "bn": bn}
    if evaluate:
        result.update(_evaluate(run_dir, avg, states[-1], bn))
    ckpt.atomic_write_json(out.with_suffix(".json"), result)
    return result


def _evaluate(run_dir: Path, avg: dict, last: dict, bn: str) -> dict[str, Any]:
    """Test metrics of the averaged and of the last weights, or why there are none."""
    from ..data import DataError
    from .recipe import build_trainer
    try:       # average_run checked that config.toml exists
        trainer = build_trainer(load_config(run_dir / "config.toml"), progress=False)
    except (DataError, ConfigError, OSError) as e:
        return {"evaluated": False, "reason": f"the run's data or model cannot be built here: {e}"}
    out: dict[str, Any] = {"evaluated": True}
    for name, state in (("last", last), ("average", avg)):
        trainer.model.load_state_dict(state)
        if name == "average" and bn == "recompute":
            recompute_bn(trainer.model, trainer.inputs(trainer.train_loader))
        out.update({f"{name}_test_{k}": v for k, v in trainer.evaluate(trainer.test_loader).items()})
    return out
