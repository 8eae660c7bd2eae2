"""Counting the memory a forward pass leaves for the backward pass."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def saved_storages(fn: Callable[[], torch.Tensor], exclude: nn.Module | None = None
                   ) -> tuple[dict[int, int], torch.Tensor]:
    """The distinct storages saved for backward while ``fn()`` runs (``torch.autograd.graph.saved_tensors_hooks``),
    as data pointer -> bytes, not counting the parameters of ``exclude`` (always resident anyway); and ``fn()``'s
    output (which keeps the graph alive). Tensors saved by a custom autograd Function's ``save_for_backward`` are
    counted too; a Function that keeps a tensor on ``ctx`` outside it is not (ours do not)."""
    params = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
    seen: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return seen, out


def saved_bytes(fn: Callable[[], torch.Tensor], exclude: nn.Module | None = None) -> int:
    """Bytes of distinct storages saved for backward while ``fn()`` runs (see :func:`saved_storages`)."""
    return sum(saved_storages(fn, exclude)[0].values())
