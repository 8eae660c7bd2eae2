"""Penalty terms added to the loss: weight decay as an explicit L1/L2 penalty, and spectral norm
regularization.

**Weight penalty**: ``l1 * sum |w| + (l2 / 2) * sum w^2`` over the weights, with normalization and bias
parameters (ndim <= 1) excluded by default -- penalizing BN's gamma/beta only fights the normalization
(its output is invariant to the scale of the preceding weights). The L2 term's gradient ``l2 * w`` is
classic weight decay for SGD (not for Adam: see AdamW).

**Spectral norm regularization** (Yoshida & Miyato 2017, arXiv:1705.10941): ``(lam / 2) * sum_l sigma(W_l)^2``
with ``sigma`` the largest singular value of each weight matrix (conv kernels reshaped to
(out, in * kh * kw)), estimated by power iteration with persistent vectors ``u``, ``v`` (one step per
call, as in the paper): ``v <- W^T u / ||W^T u||``, ``u <- W v / ||W v||``, ``sigma = u^T W v``. With
``u``, ``v`` held constant, ``d sigma / dW = u v^T``, the paper's gradient ``lam * sigma * u v^T``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _weights(model: nn.Module, include_norm_and_bias: bool) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and (include_norm_and_bias or p.ndim > 1)]


class WeightPenalty(nn.Module):
    """``l1 * sum|w| + l2/2 * sum w^2`` over ``model``'s weights (norm and bias parameters excluded unless asked)."""

    def __init__(self, model: nn.Module, l1: float = 0.0, l2: float = 0.0, include_norm_and_bias: bool = False) -> None:
        super().__init__()
        if l1 < 0 or l2 < 0:
            raise ValueError(f"l1 and l2 must be >= 0, got {l1}, {l2}")
        self.l1, self.l2 = float(l1), float(l2)
        self._params = [p for _, p in _weights(model, include_norm_and_bias)]
        self.names = [n for n, _ in _weights(model, include_norm_and_bias)]

    def forward(self) -> torch.Tensor:
        total = self._params[0].new_zeros(()) if self._params else torch.zeros(())
        if self.l1:
            total = total + self.l1 * sum(p.abs().sum() for p in self._params)
        if self.l2:
            total = total + 0.5 * self.l2 * sum(p.square().sum() for p in self._params)
        return total

    def extra_repr(self) -> str:
        return f"l1={self.l1}, l2={self.l2}, tensors={len(self._params)}"


class SpectralNormPenalty(nn.Module):
    """``lam/2 * sum_l sigma(W_l)^2`` over ``model``'s conv and linear weights, power iteration (1705.10941)."""

    def __init__(self, model: nn.Module, lam: float = 0.01, iters: int = 1, seed: int = 0) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        self.lam, self.iters = float(lam), int(iters)
        self._params = [p for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
                        for p in [m.weight]]
        g = torch.Generator().manual_seed(seed)
        for i, p in enumerate(self._params):
            out = p.shape[0]
            self.register_buffer(f"u{i}", F.normalize(torch.randn(out, generator=g), dim=0).to(p.device, p.dtype))

    def sigmas(self) -> list[torch.Tensor]:
        """Current largest-singular-value estimates (one power-iteration step each, updating ``u``)."""
        out = []
        for i, p in enumerate(self._params):
            w = p.reshape(p.shape[0], -1)
            u = getattr(self, f"u{i}")
            with torch.no_grad():
                wd = w.detach().float()
                for _ in range(self.iters):
                    v = F.normalize(wd.T @ u.float(), dim=0)
                    u_new = F.normalize(wd @ v, dim=0)
                    u = u_new
                getattr(self, f"u{i}").copy_(u)
            out.append(u.to(w.dtype) @ w @ v.to(w.dtype))
        return out

    def forward(self) -> torch.Tensor:
        if not self._params:
            return torch.zeros(())
        return 0.5 * self.lam * sum(s.square() for s in self.sigmas())


class WithPenalties(nn.Module):
    """``loss(logits, target) + sum(penalty())``: a loss with penalty terms on the model's parameters."""

    def __init__(self, loss: nn.Module, penalties: list[nn.Module]) -> None:
        super().__init__()
        self.loss, self.penalties = loss, nn.ModuleList(penalties)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = self.loss(logits, target)
        if self.training:
            for p in self.penalties:
                total = total + p()
        return total
