"""Optimal-transport (Wasserstein) loss with a ground metric between classes, by entropic Sinkhorn
iterations (Frogner, Zhang, Mobahi, Araya-Polo & Poggio 2015, arXiv:1506.05439; Cuturi 2013).

For the predicted distribution ``p = softmax(z)`` and the target ``q`` over ``K`` classes, and a cost
matrix ``M`` (``M[i, j]`` = cost of moving mass from class ``i`` to class ``j``), the loss is the transport
cost of the entropy-regularized optimal plan

    T* = argmin_{T 1 = p, T^T 1 = q, T >= 0}  <T, M> - eps * H(T),       loss = <T*, M>

found by Sinkhorn's alternating scaling, run in the log domain (``log u = log p - LSE(log K + log v)``,
``log K = -M / eps``) so that small ``eps`` neither under- nor overflows. As ``eps -> 0`` it converges to
the exact optimal-transport cost (tested against a linear program). Gradients flow through the unrolled
iterations. With ``M = 1 - I`` the cost is the total-variation distance; a metric with small costs between
similar classes (e.g. shirt and T-shirt) penalizes confusing them less.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .classification import _reduce, check_logits_target, check_reduction, soft_targets


def sinkhorn_plan(p: torch.Tensor, q: torch.Tensor, cost: torch.Tensor, eps: float = 0.05,
                  iters: int = 100) -> torch.Tensor:
    """Entropic OT plans (N, K, K) between rows of ``p`` and ``q`` (N, K), log-domain Sinkhorn."""
    tiny = torch.finfo(p.dtype).tiny
    logp, logq = p.clamp_min(tiny).log(), q.clamp_min(tiny).log()
    logk = (-cost / eps).unsqueeze(0)                                   # (1, K, K)
    f = torch.zeros_like(p)
    g = torch.zeros_like(q)
    for _ in range(iters):
        f = logp - torch.logsumexp(logk + g.unsqueeze(1), dim=2)
        g = logq - torch.logsumexp(logk + f.unsqueeze(2), dim=1)
    return (f.unsqueeze(2) + logk + g.unsqueeze(1)).exp()


class SinkhornLoss(nn.Module):
    """Entropic optimal-transport loss between ``softmax(logits)`` and the targets under class costs ``cost``
    (a K x K list; default ``1 - I``). ``eps`` is the entropic regularization, ``iters`` the Sinkhorn steps.

    Shapes: logits (N, K), targets class indices (N,) of any integer dtype or probabilities (N, K). Computed in
    at least float32, returned in the logits' dtype. ``validate=True`` checks label ranges and finite logits
    (a host synchronization)."""

    def __init__(self, cost: Sequence[Sequence[float]] | torch.Tensor | None = None, num_classes: int | None = None,
                 eps: float = 0.05, iters: int = 100, reduction: str = "mean", *, validate: bool = False) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        if cost is None:
            if num_classes is None:
                raise ValueError("SinkhornLoss needs a cost matrix or num_classes (for the 0/1 cost)")
            m = 1.0 - torch.eye(num_classes)
        else:
            m = torch.as_tensor(cost, dtype=torch.float32)
            if m.ndim != 2 or m.shape[0] != m.shape[1] or (m < 0).any() or not torch.isfinite(m).all():
                raise ValueError(f"cost must be a square matrix of finite non-negative numbers, got shape "
                                 f"{tuple(m.shape)}")
        self.register_buffer("cost", m)
        self.eps, self.iters, self.reduction = float(eps), int(iters), check_reduction("SinkhornLoss", reduction)
        self.validate = bool(validate)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_logits_target("SinkhornLoss", logits, target, validate=self.validate, min_ndim=2, max_ndim=2)
        k = logits.shape[1]
        if self.cost.shape[0] != k:
            raise ValueError(f"SinkhornLoss: cost matrix is {self.cost.shape[0]}x{self.cost.shape[0]} for {k} classes")
        work = torch.promote_types(logits.dtype, torch.float32)           # the iterations need at least fp32
        p = torch.softmax(logits.to(work), dim=1)
        q = soft_targets(target, k, dtype=work)
        cost = self.cost.to(work)
        plan = sinkhorn_plan(p, q, cost, self.eps, self.iters)
        return _reduce((plan * cost).sum((1, 2)), self.reduction).to(logits.dtype)
