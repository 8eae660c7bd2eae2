"""Checkpoints written atomically, in formats that load without unpickling code.

Each checkpoint is a directory ``checkpoints/epoch-NNNN/`` holding

- ``model.safetensors``: the model's weights (safetensors);
- ``best.safetensors``: the best epoch's weights, when early stopping keeps them;
- ``state.pt``: optimizer, scheduler, RNG, early-stopping state and the metric history, saved
  with ``torch.save`` and loaded with ``torch.load(weights_only=True)``.

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


def write_checkpoint(root: str | os.PathLike, epoch: int, write: Callable[[Path], None], keep: int = 2) -> Path:
    """Create ``root/epoch-NNNN`` atomically: ``write(tmpdir)`` fills it, then it is renamed into place.

    Older checkpoints beyond the ``keep`` most recent are removed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{epoch:04d}"
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
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
             and p.name[len(_PREFIX):].isdigit() and (p / "state.pt").is_file() and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


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
