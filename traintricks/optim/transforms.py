"""Gradient transforms, composed in a chain that the trainer applies between ``backward()`` and
``optimizer.step()`` (the optax model: each transform maps the gradients to new gradients).

Each transform is called with the list of parameters that have gradients and rewrites their ``.grad``
in place, without host synchronization (norms and scales stay tensors).

* :class:`ClipByValue` -- ``g <- clip(g, -c, c)`` elementwise.
* :class:`ClipByGlobalNorm` (Pascanu, Mikolov & Bengio 2013, arXiv:1211.5063) -- with ``N = ||(g_1, .., g_n)||``
  over all tensors, ``g <- g * min(1, c / N)``: the direction is kept, the step bounded.
* :class:`AdaptiveClip` (Brock, De, Smith & Simonyan 2021, arXiv:2102.06171) -- unit-wise (per output
  row): if ``||G_i|| / max(||W_i||, eps) > lam`` then ``G_i <- lam * max(||W_i||, eps) / ||G_i|| * G_i``;
  the bound scales with the weights.
* :class:`GradientNoise` (Neelakantan et al. 2015, arXiv:1511.06807) -- ``g <- g + N(0, sigma_t^2)`` with the
  annealed variance ``sigma_t^2 = eta / (1 + t)^gamma`` (``t`` counts calls, from 0).
* :class:`Chain` -- applies several in order.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..registry import Registry

TRANSFORMS = Registry("gradient transform", section="weight update")


class GradientTransform:
    def __call__(self, params: Sequence[torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ClipByValue(GradientTransform):
    def __init__(self, clip: float = 1.0) -> None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.clip = float(clip)

    @torch.no_grad()
    def __call__(self, params):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_clamp_min_(grads, -self.clip)
            torch._foreach_clamp_max_(grads, self.clip)

    def __repr__(self):
        return f"ClipByValue(clip={self.clip})"


class ClipByGlobalNorm(GradientTransform):
    """``g <- g * min(1, max_norm / (N + eps))`` with ``N`` the global L2 norm of all gradients: the computation of
    :func:`torch.nn.utils.clip_grad_norm_` (``eps = 1e-6`` as there). Calling it returns ``N``, the total norm
    *before* clipping, as a tensor (``clip_grad_norm_``'s return value; ``tensor(0.)`` without gradients); it is
    also kept as ``last_norm``. No host synchronization."""

    def __init__(self, max_norm: float = 1.0, eps: float = 1e-6) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm, self.eps = float(max_norm), eps
        self.last_norm: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, params):
        if isinstance(params, torch.Tensor):
            params = [params]
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            self.last_norm = torch.tensor(0.0)
            return self.last_norm
        device = grads[0].device
        norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in torch._foreach_norm(grads)]))
        self.last_norm = norm
        coef = (self.max_norm / (norm + self.eps)).clamp(max=1.0)
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        for dev, gs in by_device.items():   # the coefficient as clip_grad_norm_ applies it (float32, per device)
            torch._foreach_mul_(gs, coef.to(dev))
        return norm

    def __repr__(self):
        return f"ClipByGlobalNorm(max_norm={self.max_norm})"


def _unit_norms(t: torch.Tensor) -> torch.Tensor:
    """Norm of each output unit (row over all but the first dimension; the whole tensor if <= 1-D)."""
    if t.ndim <= 1:
        return t.norm().expand_as(t) if t.ndim == 1 else t.norm()
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


class AdaptiveClip(GradientTransform):
    def __init__(self, clip: float = 0.01, eps: float = 1e-3) -> None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.clip, self.eps = float(clip), float(eps)

    @torch.no_grad()
    def __call__(self, params):
        for p in params:
            if p.grad is None:
                continue
            wn = _unit_norms(p).clamp_min(self.eps)
            gn = _unit_norms(p.grad)
            bound = wn * self.clip
            p.grad.mul_(torch.where(gn > bound, bound / gn.clamp_min(1e-12), torch.ones_like(gn)))

    def __repr__(self):
        return f"AdaptiveClip(clip={self.clip}, eps={self.eps})"


class GradientNoise(GradientTransform):
    def __init__(self, eta: float = 0.01, gamma: float = 0.55, seed: int = 0) -> None:
        if eta < 0 or gamma < 0:
            raise ValueError(f"eta and gamma must be >= 0, got {eta}, {gamma}")
        self.eta, self.gamma, self.t = float(eta), float(gamma), 0
        self.generator = torch.Generator().manual_seed(seed)

    def sigma(self, t: int | None = None) -> float:
        t = self.t if t is None else t
        return (self.eta / (1 + t) ** self.gamma) ** 0.5

    @torch.no_grad()
    def __call__(self, params):
        s = self.sigma()
        for p in params:
            if p.grad is not None:
                noise = torch.randn(p.grad.shape, generator=self.generator, dtype=p.grad.dtype).to(p.grad.device)
                p.grad.add_(noise, alpha=s)
        self.t += 1

    def state_dict(self):
        return {"t": self.t, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.generator.set_state(state["generator"])

    def __repr__(self):
        return f"GradientNoise(eta={self.eta}, gamma={self.gamma})"


class Chain(GradientTransform):
    def __init__(self, *transforms: GradientTransform) -> None:
        self.transforms = list(transforms)

    def __call__(self, params):
        for t in self.transforms:
            t(params)

    def state_dict(self):
        return {str(i): t.state_dict() for i, t in enumerate(self.transforms)}

    def load_state_dict(self, state):
        for i, t in enumerate(self.transforms):
            t.load_state_dict(state.get(str(i), {}))

    def __repr__(self):
        return f"Chain({', '.join(map(repr, self.transforms))})"


@TRANSFORMS.register("clip_value")
def clip_value(clip: float = 1.0) -> GradientTransform:
    """Clip every gradient element to [-clip, clip]."""
    return ClipByValue(clip)


@TRANSFORMS.register("clip_norm")
def clip_norm(max_norm: float = 1.0) -> GradientTransform:
    """Rescale all gradients together so their global norm is at most max_norm (1211.5063)."""
    return ClipByGlobalNorm(max_norm)


@TRANSFORMS.register("adaptive_clip")
def adaptive_clip(clip: float = 0.01, eps: float = 1e-3) -> GradientTransform:
    """Unit-wise adaptive gradient clipping relative to the weight norm (2102.06171)."""
    return AdaptiveClip(clip, eps)


@TRANSFORMS.register("gradient_noise")
def gradient_noise(eta: float = 0.01, gamma: float = 0.55, seed: int = 0) -> GradientTransform:
    """Annealed Gaussian gradient noise, sigma_t^2 = eta/(1+t)^gamma (1511.06807)."""
    return GradientNoise(eta, gamma, seed)
