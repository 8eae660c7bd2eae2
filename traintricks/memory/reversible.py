"""Reversible residual blocks (RevNet; Gomez, Ren, Urtasun & Grosse 2017, arXiv:1707.04585).

The channels are split in two halves ``(x1, x2)`` and the block computes

    y1 = x1 + F(x2),        y2 = x2 + G(y1)

which can be inverted exactly: ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. So a stack of reversible blocks
need not keep any activation for backward: the backward pass reconstructs each block's input from its
output, recomputes ``F`` and ``G`` there with gradients on, and back-propagates. Memory saved for
backward no longer grows with depth (only the last output is kept), for about one extra forward pass.

The reconstruction and the recomputation are re-runs of ``F`` and ``G``: as in
:mod:`traintricks.memory.recomputation`, each runs in the state its forward saw (a
:class:`~traintricks.memory.recomputation.ForwardState` captured before ``F`` and one before ``G``: buffers
such as running statistics and renorm's step, ``training`` flags, RNG states), on copies of the buffers, so
the inverse is exact for stateful layers (renorm reads its running statistics in training), random layers
replay their masks, and the live statistics are updated once, by the forward. Because a block's input is
reconstructed (not stored), reconstruction error accumulates in float32 over very deep stacks; it stays
at rounding level for the depths here (tested in float64 to 1e-10).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .recomputation import ForwardState, autocast_state


class ReversibleBlock(nn.Module):
    """``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` on the two channel halves (dim 1); ``inverse(y)`` recovers ``x``."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f, self.g = f, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        return torch.cat([y1, x2 + self.g(y1)], dim=1)

    def forward_recording(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[ForwardState, ForwardState]]:
        """The output and the states in which F and G ran (to re-run them in :meth:`inverse` / backward)."""
        x1, x2 = x.chunk(2, dim=1)
        s_f = ForwardState(self.f, [x2])
        y1 = x1 + self.f(x2)
        s_g = ForwardState(self.g, [y1])
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1), (s_f, s_g)

    def _replayed(self, x: torch.Tensor, states: tuple[ForwardState, ForwardState]) -> torch.Tensor:
        """The forward, with F and G each run in its recorded state."""
        x1, x2 = x.chunk(2, dim=1)
        with states[0].replay():
            y1 = x1 + self.f(x2)
        with states[1].replay():
            y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, states: tuple[ForwardState, ForwardState] | None = None) -> torch.Tensor:
        """``x`` from ``y``. With ``states`` (from :meth:`forward_recording`) F and G run in the state of that
        forward (random layers replay their masks, stateful layers see their statistics of then); without,
        in the current state. Either way the live buffers, flags and RNG are left unchanged."""
        y1, y2 = y.chunk(2, dim=1)
        s_g = states[1] if states is not None else ForwardState(self.g, [y1])
        with s_g.replay():
            x2 = y2 - self.g(y1)
        s_f = states[0] if states is not None else ForwardState(self.f, [x2])
        with s_f.replay():
            x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, x, *params):
        ctx.blocks, ctx.states = blocks, []
        ctx.autocast = autocast_state(x)
        with torch.no_grad():
            for b in blocks:
                x, states = b.forward_recording(x)
                ctx.states.append(states)
        y = x.detach()
        ctx.save_for_backward(y.clone())     # a private copy: the caller may modify the output in place
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        dev, enabled, dtype = ctx.autocast
        param_grads: dict[int, torch.Tensor] = {}
        for b, states in zip(reversed(ctx.blocks), reversed(ctx.states)):
            with torch.autocast(dev, dtype=dtype, enabled=enabled):
                x = b.inverse(y, states)                            # reconstruct the block's input
            with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                xr = x.detach().requires_grad_(True)
                out = b._replayed(xr, states)                       # recompute with gradients on
            params = [p for p in b.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out, [xr] + params, grad_y, allow_unused=True)
            grad_y = grads[0]
            for p, g in zip(params, grads[1:]):
                if g is not None:
                    param_grads[id(p)] = param_grads[id(p)] + g if id(p) in param_grads else g
            y = x
        out_grads, seen = [], set()
        for b in ctx.blocks:
            for p in b.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out_grads.append(param_grads.get(id(p)))
        return (None, grad_y, *out_grads)


class ReversibleSequence(nn.Module):
    """A stack of :class:`ReversibleBlock`s whose activations are reconstructed, not stored, in backward."""

    def __init__(self, blocks: Sequence[ReversibleBlock]) -> None:
        super().__init__()
        for b in blocks:
            if not isinstance(b, ReversibleBlock):
                raise ValueError(f"ReversibleSequence takes ReversibleBlocks, got {type(b).__name__}")
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"ReversibleSequence: the channel count must be even to split in halves, got {x.shape[1]}")
        if not torch.is_grad_enabled():
            for b in self.blocks:
                x = b(x)
            return x
        params = []
        seen = set()
        for p in self.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        return _ReversibleFunction.apply(list(self.blocks), x, *params)
