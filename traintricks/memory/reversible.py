"""Reversible residual blocks (RevNet; Gomez, Ren, Urtasun & Grosse 2017, arXiv:1707.04585).

The channels are split in two halves ``(x1, x2)`` and the block computes

    y1 = x1 + F(x2),        y2 = x2 + G(y1)

which can be inverted exactly: ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. So a stack of reversible blocks
need not keep any activation for backward: the backward pass reconstructs each block's input from its
output, recomputes ``F`` and ``G`` there with gradients on, and back-propagates. Memory saved for
backward no longer grows with depth (only the last output is kept), for about one extra forward pass.

Random layers and batch-norm statistics inside ``F``/``G`` are handled as in
:mod:`traintricks.memory.checkpoint`: the RNG state of each block's forward is replayed, and buffers are
restored after the recomputation so running statistics are updated once. Because a block's input is
reconstructed (not stored), reconstruction error accumulates in float32 over very deep stacks; it stays
at rounding level for the depths here (tested in float64 to 1e-10).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .checkpoint import autocast_state


class ReversibleBlock(nn.Module):
    """``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` on the two channel halves; ``inverse(y)`` recovers ``x``."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f, self.g = f, g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_recording(x)[0]

    def forward_recording(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The output and the RNG states in which F and G ran (to replay them)."""
        x1, x2 = x.chunk(2, dim=1)
        s_f = torch.get_rng_state()
        y1 = x1 + self.f(x2)
        s_g = torch.get_rng_state()
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1), (s_f, s_g)

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, rng: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` from ``y``; with ``rng`` (from :meth:`forward_recording`) random layers replay their masks."""
        y1, y2 = y.chunk(2, dim=1)
        with torch.random.fork_rng(devices=[]):
            if rng is not None:
                torch.set_rng_state(rng[1])
            x2 = y2 - self.g(y1)
            if rng is not None:
                torch.set_rng_state(rng[0])
            x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, x, *params):
        ctx.blocks, ctx.rng = blocks, []
        ctx.autocast = autocast_state(x)
        with torch.no_grad():
            for b in blocks:
                x, rng = b.forward_recording(x)
                ctx.rng.append(rng)
        y = x.detach()
        ctx.save_for_backward(y.clone())     # a private copy: the caller may modify the output in place
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        dev, enabled, dtype = ctx.autocast
        param_grads: dict[int, torch.Tensor] = {}
        for b, rng in zip(reversed(ctx.blocks), reversed(ctx.rng)):
            buffers = [t.detach().clone() for t in b.buffers()]
            with torch.autocast(dev, dtype=dtype, enabled=enabled):
                x = b.inverse(y, rng)                               # reconstruct the block's input
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng[0])
                with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                    xr = x.detach().requires_grad_(True)
                    out = b(xr)                                     # recompute with gradients on
            params = [p for p in b.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out, [xr] + params, grad_y, allow_unused=True)
            with torch.no_grad():                                   # running statistics: updated once
                for t, saved in zip(b.buffers(), buffers):
                    t.copy_(saved)
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
