"""Large-margin softmax (L-Softmax; Liu, Wen, Yu & Yang 2016, arXiv:1612.02295).

Softmax cross-entropy on logits ``f_j = ||W_j|| ||x|| cos(theta_j)`` (+ bias) asks ``cos(theta_y) >
cos(theta_j)`` for the true class ``y``; L-Softmax asks more, ``cos(m * theta_y) > cos(theta_j)``, by
replacing the target logit with

    f_y = ||W_y|| ||x|| psi(theta_y),   psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi/m, (k+1) pi/m]

(monotone decreasing on [0, pi], equal to ``cos`` when ``m = 1``). ``cos(m theta)`` is the Chebyshev
polynomial ``T_m(cos theta)``, so the gradient never goes through ``arccos`` (``k`` is piecewise constant).
The optional ``lam`` blends in the plain logit, ``f_y = (lam * ||W|| ||x|| cos + ||W|| ||x|| psi) / (1 + lam)``,
the paper's device for stable early training. At inference the plain logits ``W x + b`` are used.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .classification import check_reduction, class_index_target, cross_entropy


def chebyshev(c: torch.Tensor, m: int) -> torch.Tensor:
    """``T_m(c) = cos(m * arccos(c))`` by the recurrence ``T_{n+1} = 2 c T_n - T_{n-1}``."""
    t_prev, t = torch.ones_like(c), c
    if m == 0:
        return t_prev
    for _ in range(m - 1):
        t_prev, t = t, 2 * c * t - t_prev
    return t


def large_margin_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                        m: int, lam: float = 0.0) -> torch.Tensor:
    """The logits with the L-Softmax target logit (see the module docstring): ``x`` (N, D), ``weight`` (K, D),
    ``target`` (N,) class indices of any integer dtype; in ``x``'s dtype."""
    target = class_index_target("large_margin_logits", target).long()
    logits = x @ weight.T
    w_y = weight[target]                                             # (N, D)
    norms = w_y.norm(dim=1) * x.norm(dim=1)
    cos = ((w_y * x).sum(1) / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
    with torch.no_grad():
        k = torch.floor(m * torch.acos(cos) / math.pi).clamp(0, m - 1)
    psi = (1 - 2 * (k % 2)) * chebyshev(cos, m) - 2 * k
    f_y = norms * (lam * cos + psi) / (1 + lam)
    logits = logits.scatter(1, target[:, None], f_y[:, None].to(logits.dtype))   # autocast: norms run in fp32
    return logits + bias if bias is not None else logits


class LargeMarginSoftmax(nn.Module):
    """L-Softmax loss on features ``x`` (N, D) and a class weight matrix (K, D): ``forward(x, target)``.

    Holds its own classifier (``weight``, ``bias``) unless given an existing ``nn.Linear`` ``head``, whose
    parameters it then uses (``device``/``dtype`` are for the classifier it creates). ``logits(x)`` gives the
    plain inference logits. ``reset_parameters()`` re-initializes the classifier (``nn.Linear``'s rule).
    Raises ``ValueError`` for targets that are not class indices (N,) matching ``x`` (N, D)."""

    def __init__(self, in_features: int | None = None, num_classes: int | None = None, m: int = 2,
                 lam: float = 0.0, head: nn.Linear | None = None, reduction: str = "mean", *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if int(m) != m or m < 1:
            raise ValueError(f"m must be a positive integer, got {m}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if head is None:
            if in_features is None or num_classes is None:
                raise ValueError("LargeMarginSoftmax needs in_features and num_classes, or a head")
            head = nn.Linear(in_features, num_classes, device=device, dtype=dtype)
        self.head, self.m, self.lam = head, int(m), float(lam)
        self.reduction = check_reduction("LargeMarginSoftmax", reduction)

    def reset_parameters(self) -> None:
        self.head.reset_parameters()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.head.in_features:
            raise ValueError(f"LargeMarginSoftmax: expected features (N, {self.head.in_features}), got {tuple(x.shape)}")
        if target.is_floating_point() or target.shape != (x.shape[0],):
            raise ValueError(f"LargeMarginSoftmax: needs class indices of shape ({x.shape[0]},), got "
                             f"{tuple(target.shape)} {target.dtype}")
        z = large_margin_logits(x, self.head.weight, self.head.bias, target, self.m, self.lam)
        return cross_entropy(z, target, reduction=self.reduction, check=False)

    def extra_repr(self) -> str:
        return f"m={self.m}, lam={self.lam}"


class LargeMarginLoss(nn.Module):
    """L-Softmax for a whole model with a linear ``head``: captures the head's input in training and computes
    the loss from it, so it can be used as ``loss_fn(logits, target)`` by the trainer."""

    def __init__(self, model: nn.Module, m: int = 2, lam: float = 0.0) -> None:
        super().__init__()
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"large_margin needs a model with a linear classifier `head`; {type(model).__name__} has none")
        self.lsm = LargeMarginSoftmax(m=m, lam=lam, head=head)
        self._features: list[torch.Tensor] = []
        head.register_forward_pre_hook(self._capture)

    def _capture(self, _module, args):
        self._features[:] = [args[0]]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self._features or self._features[0].shape[0] != logits.shape[0] or target.ndim != 1:
            return cross_entropy(logits, target)          # evaluation batches, soft targets: plain softmax
        x = self._features[0]
        return self.lsm(x, target)
