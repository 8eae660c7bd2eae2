"""Running a model once to look at it: :func:`probe`, the example forward pass the surgeries learn shapes and call
order from, leaving no trace (hooks removed, buffers, flags and RNG states rolled back)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..memory.recomputation import ForwardState


def as_inputs(example_inputs: Any) -> tuple:
    """One example input, or a tuple/list of them, as the tuple of positional arguments."""
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def probe(model: nn.Module, example_inputs: Any, hooks: Sequence[RemovableHandle]) -> None:
    """Run ``model(*example_inputs)`` under ``no_grad`` with the ``hooks`` the caller registered, then remove them
    and roll back every buffer, flag and RNG state the pass changed (:class:`~traintricks.memory.ForwardState`):
    the model is as it was (batch-norm statistics included). Raises what the forward pass raises."""
    inputs = as_inputs(example_inputs)
    state = ForwardState(model, [t for t in inputs if isinstance(t, torch.Tensor)])
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        state.rollback()
