"""Checkpoints written atomically, in formats that load without unpickling code.

Each checkpoint is a directory ``checkpoints/epoch-NNNN/`` (written when epoch ``NNNN`` ends) or
``checkpoints/epoch-NNNN-step-MMMMMM/`` (``MMMMMM`` optimizer steps into epoch ``NNNN + 1``) holding

- ``model.safetensors``: the model's weights (safetensors);
- the callbacks' files: ``ema.safetensors`` (weight EMA), ``best.safetensors`` (the best epoch's weights,
  when early stopping keeps them);
- ``state.pt``: the position, optimizer, every RNG, each callback's state (schedule, early stopping, ...) and
  the metric history, saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``.

The directory is written under a temporary name and renamed into place, so a run killed while
saving leaves the previous checkpoint intact and no partial one that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

_PREFIX = "epoch-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the file."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors (tensors made contiguous and cloned to CPU)."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """``epoch-NNNN`` at the end of epoch ``NNNN``; ``epoch-NNNN-step-MMMMMM`` ``MMMMMM`` steps into the next."""
    return f"{_PREFIX}{epoch:04d}" + (f"-step-{step:06d}" if step else "")


def _position(name: str) -> tuple[int, int] | None:
    """``(epoch, step)`` of a checkpoint directory's name, ``None`` if it is not one."""
    if not name.startswith(_PREFIX):
        return None
    epoch, sep, step = name[len(_PREFIX):].partition("-step-")
    if not epoch.isdigit() or (sep and not step.isdigit()):
        return None
    return int(epoch), int(step) if sep else 0


def write_checkpoint(root: str | os.PathLike, epoch: int, write: Callable[[Path], None], keep: int = 2,
                     step: int = 0) -> Path:
    """Create ``root/epoch-NNNN`` (or ``root/epoch-NNNN-step-MMMMMM`` for ``step`` > 0) atomically:
    ``write(tmpdir)`` fills it, then it is renamed into place.

    Older checkpoints beyond the ``keep`` most recent are removed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(epoch, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first (temporary ones are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _position(p.name) is not None
             and (p / "state.pt").is_file() and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: _position(p.name))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    torch.save(state, str(path))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load ``state.pt`` with ``weights_only=True``: tensors and plain Python values only."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable or unsafe checkpoint state ({e})") from None
