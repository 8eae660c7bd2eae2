"""Gradient transforms, composed in a chain that the trainer applies between ``backward()`` and
``optimizer.step()`` (the optax model: each transform maps the gradients to new gradients).

Each transform is called with the list of parameters that have gradients and rewrites their ``.grad``
in place, without host synchronization (norms and scales stay tensors).

* :class:`ClipByValue` -- ``g <- clip(g, -c, c)`` elementwise (``torch.nn.utils.clip_grad_value_``'s arguments).
* :class:`ClipByGlobalNorm` (Pascanu, Mikolov & Bengio 2013, arXiv:1211.5063) -- with ``N = ||(g_1, .., g_n)||_p``
  over all tensors, ``g <- g * min(1, c / N)``: the direction is kept, the step bounded
  (``torch.nn.utils.clip_grad_norm_``'s arguments and return value).
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
from torch.utils._foreach_utils import (_device_has_foreach_support, _group_tensors_by_device_and_dtype,
                                       _has_foreach_support)

from ..registry import Registry

TRANSFORMS = Registry("gradient transform", section="weight update")


class GradientTransform:
    def __call__(self, params: Sequence[torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _grads(params) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


def _by_device_and_dtype(grads: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    """torch's grouping (and order: the total norm sums the per-tensor norms in the same order)."""
    return {key: tensors for key, ([tensors], _) in _group_tensors_by_device_and_dtype([grads]).items()}


def _use_foreach(foreach: bool | None, grads: list[torch.Tensor], device: torch.device) -> bool:
    """``clip_grad_*_``'s rule: ``foreach=None`` uses the multi-tensor ops where the device supports them,
    ``foreach=True`` insists (``RuntimeError`` with torch's message on a device without them)."""
    if foreach is None:
        return _has_foreach_support(grads, device)
    if foreach and not _device_has_foreach_support(device):
        raise RuntimeError(f"foreach=True was passed, but can't use the foreach API on {device.type} tensors")
    return bool(foreach)


class ClipByValue(GradientTransform):
    """``g <- clamp(g, -clip_value, clip_value)`` elementwise, in place: :func:`torch.nn.utils.clip_grad_value_`
    with the same arguments (``clip_value``, ``foreach``). ``clip_value = 0`` zeroes the gradients (as torch);
    a negative one raises ``ValueError`` (torch clamps to the negative bound: every gradient becomes
    ``-|clip_value|``, never what was meant). Called on a parameter or an iterable of them; returns ``None``."""

    def __init__(self, clip_value: float = 1.0, foreach: bool | None = None) -> None:
        clip_value = float(clip_value)
        if not clip_value >= 0:
            raise ValueError(f"clip_value must be >= 0, got {clip_value}")
        self.clip, self.foreach = clip_value, foreach

    @property
    def clip_value(self) -> float:
        return self.clip

    @torch.no_grad()
    def __call__(self, params):
        for (device, _), gs in _by_device_and_dtype(_grads(params)).items():
            if _use_foreach(self.foreach, gs, device):
                torch._foreach_clamp_min_(gs, -self.clip)
                torch._foreach_clamp_max_(gs, self.clip)
            else:
                for g in gs:
                    g.clamp_(min=-self.clip, max=self.clip)

    def __repr__(self):
        return f"ClipByValue(clip_value={self.clip})"


class ClipByGlobalNorm(GradientTransform):
    """``g <- g * min(1, max_norm / (N + eps))`` with ``N`` the ``norm_type``-norm of all gradients taken as one
    vector (Pascanu et al. 2013, arXiv:1211.5063): :func:`torch.nn.utils.clip_grad_norm_` with its arguments
    and meaning (``eps = 1e-6`` as there, keyword-only here).

    Args:
        max_norm: the bound, >= 0 (``0`` zeroes the gradients, as torch; negative: ``ValueError``, where torch
            would flip the gradients' sign).
        norm_type: ``p`` of the p-norm, any float ``> 0`` or ``inf`` (also ``"inf"``); per tensor from
            ``torch._foreach_norm`` / ``linalg.vector_norm``, then the same norm of those norms.
        error_if_nonfinite: raise torch's ``RuntimeError`` if ``N`` is nan or inf (this reads ``N`` on the host:
            one synchronization, opt-in as in torch); otherwise the gradients are scaled by the non-finite
            coefficient as torch does.
        foreach: ``None`` multi-tensor ops where the device has them, ``True`` insist, ``False`` per tensor.

    Calling it on a parameter or an iterable of them clips the gradients in place and returns ``N`` before
    clipping as a tensor (``clip_grad_norm_``'s return value; ``tensor(0.)`` without gradients), also kept as
    ``last_norm``. No host synchronization unless ``error_if_nonfinite``."""

    def __init__(self, max_norm: float = 1.0, norm_type: float | str = 2.0, error_if_nonfinite: bool = False,
                 foreach: bool | None = None, *, eps: float = 1e-6) -> None:
        max_norm, norm_type = float(max_norm), float(norm_type)
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm}")
        if not norm_type > 0:
            raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
        self.max_norm, self.norm_type, self.eps = max_norm, norm_type, float(eps)
        self.error_if_nonfinite, self.foreach = bool(error_if_nonfinite), foreach
        self.last_norm: torch.Tensor | None = None

    @torch.no_grad()
    def total_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """``N``: :func:`torch.nn.utils.get_total_norm` of ``grads`` (same grouping, order and dtype)."""
        if not grads:
            return torch.tensor(0.0)
        norms = []
        for (device, _), gs in _by_device_and_dtype(grads).items():
            if _use_foreach(self.foreach, gs, device):
                norms.extend(torch._foreach_norm(gs, self.norm_type))
            else:
                norms.extend(torch.linalg.vector_norm(g, self.norm_type) for g in gs)
        first = grads[0].device
        norm = torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), self.norm_type)
        if self.error_if_nonfinite and torch.logical_or(norm.isnan(), norm.isinf()):
            raise RuntimeError(
                f"The total norm of order {self.norm_type} for gradients from `parameters` is non-finite, so it "
                "cannot be clipped. To disable this error and scale the gradients by the non-finite norm anyway, "
                "set `error_if_nonfinite=False`")
        return norm

    @torch.no_grad()
    def __call__(self, params):
        grads = _grads(params)
        norm = self.last_norm = self.total_norm(grads)
        if not grads:
            return norm
        coef = (self.max_norm / (norm + self.eps)).clamp(max=1.0)
        for (device, _), gs in _by_device_and_dtype(grads).items():  # as clip_grad_norm_ applies it, per device
            c = coef.to(device)
            if _use_foreach(self.foreach, gs, device):
                torch._foreach_mul_(gs, c)
            else:
                for g in gs:
                    g.mul_(c)
        return norm

    def __repr__(self):
        return f"ClipByGlobalNorm(max_norm={self.max_norm}, norm_type={self.norm_type})"


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


TRANSFORMS.register("clip_norm", ClipByGlobalNorm, options=("max_norm", "norm_type"), summary="Rescale all "
                    "gradients together so their global norm_type-norm is at most max_norm (1211.5063).")
TRANSFORMS.register("adaptive_clip", AdaptiveClip,
                    summary="Unit-wise adaptive gradient clipping relative to the weight norm (2102.06171).")
TRANSFORMS.register("gradient_noise", GradientNoise,
                    summary="Annealed Gaussian gradient noise, sigma_t^2 = eta/(1+t)^gamma (1511.06807).")
