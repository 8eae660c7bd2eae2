"""Stochastic depth (Huang, Sun, Liu, Sedra & Weinberger 2016, arXiv:1603.09382).

A residual block computes ``x + f(x)``. With stochastic depth the branch survives with probability
``p_l`` in training and is otherwise skipped, and at inference it is scaled by its survival
probability (the paper's eq. 5, the expectation of the training output):

    training:  x + b * f(x),  b ~ Bernoulli(p_l)          inference:  x + p_l * f(x)

:class:`StochasticDepth` wraps the *branch* ``f`` (the block adds the identity). ``mode="row"`` draws
``b`` per sample (as in timm's DropPath; the default, what the SPEC asks); ``mode="batch"`` draws one
``b`` per mini-batch as in the paper, and skips computing ``f`` entirely when it is dropped (the
paper's speed-up).

Survival probabilities fall linearly with depth (the paper's eq. 4): block ``l`` of ``L`` gets
``p_l = 1 - l / L * (1 - p_L)``, from nearly 1 at the input to ``p_L`` (0.5 in the paper) at the
output; :func:`linear_survival` computes them.
"""
from __future__ import annotations

import torch
from torch import nn


def linear_survival(num_blocks: int, last: float = 0.5) -> list[float]:
    """``p_l = 1 - l / L * (1 - p_L)`` for ``l = 1..L``: the paper's linear decay rule."""
    if num_blocks < 1:
        raise ValueError(f"linear_survival: need at least one block, got {num_blocks}")
    if not 0.0 < last <= 1.0:
        raise ValueError(f"linear_survival: the last survival probability must be in (0, 1], got {last}")
    return [1.0 - l / num_blocks * (1.0 - last) for l in range(1, num_blocks + 1)]


class StochasticDepth(nn.Module):
    """Wrap a residual branch ``f``: ``b * f(x)`` in training (``b ~ Bernoulli(survival_prob)``), ``p * f(x)`` at inference."""

    def __init__(self, branch: nn.Module, survival_prob: float = 0.8, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 < survival_prob <= 1.0:
            raise ValueError(f"StochasticDepth: survival_prob must be in (0, 1], got {survival_prob}")
        if mode not in ("row", "batch"):
            raise ValueError(f"StochasticDepth: mode must be 'row' or 'batch', got {mode!r}")
        self.branch, self.survival_prob, self.mode = branch, float(survival_prob), mode
        self._out_shapes: dict[tuple, tuple] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.survival_prob
        if not self.training:
            out = self.branch(x)
            return out if p == 1.0 else out * p
        if self.mode == "batch":
            if float(torch.rand(())) < p:
                return self.branch(x)
            shape = self._out_shapes.get(tuple(x.shape))
            if shape is None:                  # learn the branch's output shape once per input shape
                with torch.no_grad():
                    shape = self._out_shapes.setdefault(tuple(x.shape), tuple(self.branch(x).shape))
            return x.new_zeros(shape)          # dropped: the branch is not computed at all
        out = self.branch(x)
        keep = (torch.rand((out.shape[0],) + (1,) * (out.ndim - 1), device=out.device) < p).to(out.dtype)
        return out * keep

    def extra_repr(self) -> str:
        return f"survival_prob={self.survival_prob:.4g}, mode={self.mode}"
