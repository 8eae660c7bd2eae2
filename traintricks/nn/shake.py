"""Shake-Shake (Gastaldi 2017, arXiv:1705.07485) and ShakeDrop (Yamada et al. 2018, arXiv:1802.02375):
residual branches scaled by random coefficients that differ between the forward and the backward pass.

**Shake-Shake** mixes two residual branches with a per-image ``alpha ~ U(0, 1)`` in the forward pass
and an independent per-image ``beta ~ U(0, 1)`` in the backward pass ("Shake-Shake-Image"):

    forward:   y = alpha * f1(x) + (1 - alpha) * f2(x)
    backward:  dL/df1 = beta * dL/dy,   dL/df2 = (1 - beta) * dL/dy
    inference: y = 0.5 * f1(x) + 0.5 * f2(x)

**ShakeDrop** scales one branch by ``b + alpha - b * alpha`` with ``b ~ Bernoulli(p_l)`` (kept as is
when ``b = 1``) and ``alpha ~ U(-1, 1)``, and the gradient by ``b + beta - b * beta`` with ``beta ~ U(0, 1)``,
per image; at inference by the expectation ``E[b + alpha - b * alpha] = p_l`` (``E[alpha] = 0``):

    forward:   y = (b + alpha - b * alpha) * f(x)
    backward:  dL/df = (b + beta - b * beta) * dL/dy
    inference: y = p_l * f(x)

Both wrap branches only; the residual block adds the identity. The backward coefficient is not the
derivative of the forward: each is a custom :class:`torch.autograd.Function`.
"""
from __future__ import annotations

import torch
from torch import nn

from .dropout import _traced


def _reset_branches(*branches: nn.Module) -> None:
    for branch in branches:
        for m in branch.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def _per_image(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return torch.empty(shape, device=x.device, dtype=torch.float32).uniform_(low, high).to(x.dtype)


class ShakeShakeFunction(torch.autograd.Function):
    """``alpha * a + (1 - alpha) * b`` forward; gradients ``beta * g`` and ``(1 - beta) * g`` backward."""

    @staticmethod
    def forward(ctx, a, b, alpha, beta):
        ctx.save_for_backward(beta)
        return b + alpha * (a - b)

    @staticmethod
    def backward(ctx, g):
        (beta,) = ctx.saved_tensors
        ga = g * beta
        return ga, g - ga, None, None


class ShakeDropFunction(torch.autograd.Function):
    """``forward_coef * f`` forward; ``backward_coef * g`` backward."""

    @staticmethod
    def forward(ctx, f, forward_coef, backward_coef):
        ctx.save_for_backward(backward_coef)
        return f * forward_coef

    @staticmethod
    def backward(ctx, g):
        (coef,) = ctx.saved_tensors
        return g * coef, None, None


def _check_shakedrop(name: str, p: float, alpha_range, beta_range) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must be in [0, 1], got {p}")
    if len(alpha_range) != 2 or len(beta_range) != 2 or alpha_range[0] > alpha_range[1] \
            or beta_range[0] > beta_range[1]:
        raise ValueError(f"{name}: ranges must be (low, high), got {tuple(alpha_range)}, {tuple(beta_range)}")


def shake_drop(f: torch.Tensor, p: float, alpha_range: tuple[float, float] = (-1.0, 1.0),
               beta_range: tuple[float, float] = (0.0, 1.0), training: bool = True) -> torch.Tensor:
    """ShakeDrop of a residual branch's output ``f`` (N, ...) with survival probability ``p``: per sample
    ``(b + alpha - b * alpha) * f`` forward and ``(b + beta - b * beta) * g`` backward in training (``b ~
    Bernoulli(p)``, ``alpha ~ U(alpha_range)``, ``beta ~ U(beta_range)``); ``(p + (1 - p) * E[alpha]) * f`` when
    not ``training``. Output of ``f``'s shape and dtype; no host synchronization."""
    if not training:
        return f * (p + (1 - p) * 0.5 * (alpha_range[0] + alpha_range[1]))
    b = (torch.rand((f.shape[0],) + (1,) * (f.ndim - 1), device=f.device) < p).to(f.dtype)
    alpha, beta = _per_image(f, *alpha_range), _per_image(f, *beta_range)
    return ShakeDropFunction.apply(f, b + alpha - b * alpha, b + beta - b * beta)


class ShakeShake(nn.Module):
    """Two residual branches mixed by Shake-Shake (per image; 0.5/0.5 at inference). Give exactly two branches."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        if len(branches) != 2:
            raise ValueError(f"ShakeShake mixes exactly two branches, got {len(branches)}")
        self.branch1, self.branch2 = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = _traced(self, x)                  # torch.fx: one node, so a traced model follows train()/eval()
        if node is not None:
            return node
        a, b = self.branch1(x), self.branch2(x)
        if not self.training:
            return 0.5 * (a + b)
        return ShakeShakeFunction.apply(a, b, _per_image(a, 0.0, 1.0), _per_image(a, 0.0, 1.0))

    def reset_parameters(self) -> None:
        """Re-initialize both branches (every sub-module's own ``reset_parameters``)."""
        _reset_branches(self.branch1, self.branch2)


class ShakeDrop(nn.Module):
    """One residual branch under ShakeDrop with survival probability ``p`` (``p_l`` in the paper)."""

    def __init__(self, branch: nn.Module, p: float = 0.5, alpha_range: tuple[float, float] = (-1.0, 1.0),
                 beta_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        _check_shakedrop("ShakeDrop", p, alpha_range, beta_range)
        self.branch, self.p = branch, float(p)
        self.alpha_range, self.beta_range = tuple(alpha_range), tuple(beta_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        node = _traced(self, x)
        if node is not None:
            return node
        return shake_drop(self.branch(x), self.p, self.alpha_range, self.beta_range, self.training)

    def reset_parameters(self) -> None:
        """Re-initialize the branch (every sub-module's own ``reset_parameters``)."""
        _reset_branches(self.branch)

    def extra_repr(self) -> str:
        return f"p={self.p:.4g}, alpha_range={self.alpha_range}, beta_range={self.beta_range}"


class ShakeDropScale(nn.Module):
    """ShakeDrop applied to a given residual branch *output* (:func:`shake_drop` with survival ``p``): the
    parameterless form that :func:`traintricks.surgery.add_shakedrop` hooks onto a branch's last module, so that the
    branch keeps its module paths and ``state_dict`` keys (:class:`ShakeDrop` wraps the branch module instead).
    Input (N, ...), output of the same shape and dtype; one ``call_module`` node under ``torch.fx``. Raises
    ``ValueError`` for ``p`` outside ``[0, 1]`` or a range whose low end exceeds its high end."""

    def __init__(self, p: float = 0.5, alpha_range: tuple[float, float] = (-1.0, 1.0),
                 beta_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        _check_shakedrop("ShakeDropScale", p, alpha_range, beta_range)
        self.p, self.alpha_range, self.beta_range = float(p), tuple(alpha_range), tuple(beta_range)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        node = _traced(self, f)
        if node is not None:
            return node
        return shake_drop(f, self.p, self.alpha_range, self.beta_range, self.training)

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers)."""

    def extra_repr(self) -> str:
        return f"p={self.p:.4g}, alpha_range={self.alpha_range}, beta_range={self.beta_range}"
