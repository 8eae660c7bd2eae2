"""Layer-wise adaptive rate scaling for large batches: LARS and LAMB.

**LARS** (You, Gitman & Ginsburg 2017, arXiv:1708.03888, Algorithm 1). Per tensor (layer) ``l``:

    local_lr = eta * ||w|| / (||g|| + wd * ||w||)          (trust coefficient eta, e.g. 0.001)
    b <- mu * b + lr * local_lr * (g + wd * w)
    w <- w - b

**LAMB** (You et al. 2019, arXiv:1904.00962, Algorithm 2). Adam's bias-corrected moments give the
direction ``r = m_hat / (sqrt(v_hat) + eps) + wd * w``; per tensor

    w <- w - lr * (phi(||w||) / ||r||) * r                 (phi = identity, optionally clamped)

In both, the ratio is 1 when either norm is 0, and tensors with at most one dimension (biases,
normalization scales and shifts) are by default excluded from the adaptation and from weight decay
(``exclude_1d=True``): the papers adapt per *layer weight*, and decaying BN parameters only fights the
normalization. All norms of a group come from one ``torch._foreach_norm`` call and the ratios stay tensors
(no host synchronization); under ``torch.compile`` the step counts and bias corrections stay tensors too.
State is per parameter (LAMB's bias corrections use each tensor's own step count);
``maximize=True`` (keyword-only) ascends. Compared with ``pytorch_optimizer``'s LARS / Lamb in
``tests/compat/test_optimizers.py`` (where their rules differ from the papers: ``docs/compatibility.md``).
"""
from __future__ import annotations

from typing import Iterable

import torch

from .first_order import _FOREACH, Optimizer, _check_range, _num, _step_values, adam_moments_, check_betas


def _trust(num: torch.Tensor, den: torch.Tensor, scale: float = 1.0) -> list[torch.Tensor]:
    """``scale * num / den`` where both are positive, else 1; vectors in, a list of 0-d tensors out
    (a handful of vector operations rather than a few per tensor)."""
    return list(torch.where((num > 0) & (den > 0), scale * num / den, torch.ones_like(num)).unbind())


class LARS(Optimizer):
    """LARS (1708.03888); see the module docstring."""

    def __init__(self, params: Iterable, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 5e-4,
                 trust_coefficient: float = 0.001, eps: float = 0.0, exclude_1d: bool = True, *,
                 maximize: bool = False) -> None:
        _check_range("momentum", momentum, 0.0, 1.0)
        _check_range("trust_coefficient", trust_coefficient, 0.0)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, exclude_1d=exclude_1d,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params, grads = self._group_tensors(group)
            if not params:
                continue
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            wd, mu, lr = group["weight_decay"], group["momentum"], _num(group["lr"])
            adapt = [p.ndim > 1 or not group["exclude_1d"] for p in params]
            ap = [p for p, a in zip(params, adapt) if a]
            ag = [g for g, a in zip(grads, adapt) if a]
            d = list(grads)
            if ap:
                wn, gn = torch.stack(torch._foreach_norm(ap)), torch.stack(torch._foreach_norm(ag))
                den = gn + wd * wn + group["eps"]
                ratio = _trust(wn, den, group["trust_coefficient"])
                upd = torch._foreach_add(ag, ap, alpha=wd) if wd else [g.clone() for g in ag]
                torch._foreach_mul_(upd, ratio)
                it = iter(upd)
                d = [next(it) if a else g for g, a in zip(grads, adapt)]
            if mu:
                bufs = self._state_list(params, "momentum_buffer")
                torch._foreach_mul_(bufs, mu)
                _FOREACH.add_(bufs, d, alpha=lr)
                torch._foreach_sub_(params, bufs)
            else:
                _FOREACH.add_(params, d, alpha=-lr)
        return loss


class LAMB(Optimizer):
    """LAMB (1904.00962); see the module docstring. ``clamp`` bounds ``phi(||w||)`` to ``[0, clamp]`` if given."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, clamp: float | None = None,
                 exclude_1d: bool = True, *, maximize: bool = False) -> None:
        betas = check_betas(betas)
        _check_range("eps", eps, 0.0)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, clamp=clamp,
                                      exclude_1d=exclude_1d, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params, grads = self._group_tensors(group)
            if not params:
                continue
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            (b1, b2), eps, wd, lr = group["betas"], group["eps"], group["weight_decay"], _num(group["lr"])
            m, v = self._state_list(params, "exp_avg"), self._state_list(params, "exp_avg_sq")
            t = _step_values(self._steps(params, group))      # each parameter's own step count (numbers, or
            # 0-d tensors under torch.compile: no host read)
            adam_moments_(m, v, grads, b1, b2)
            # r = m_hat / (sqrt(v_hat) + eps) = k * m / (sqrt(v) + eps * sqrt(c2)), k = sqrt(c2) / c1, plus wd * w:
            # four passes (sqrt, add, the decay term, addcdiv) instead of six
            c1, c2 = [1 - b1 ** ti for ti in t], [(1 - b2 ** ti) ** 0.5 for ti in t]
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, [eps * c for c in c2])
            adapt = [p.ndim > 1 or not group["exclude_1d"] for p in params]
            r = [p * wd if (wd and a) else torch.zeros_like(p) for p, a in zip(params, adapt)]
            _FOREACH.addcdiv_(r, m, denom, [b / a for a, b in zip(c1, c2)])
            ap = [p for p, a in zip(params, adapt) if a]
            ar = [x for x, a in zip(r, adapt) if a]
            if ap:
                wn, rn = torch.stack(torch._foreach_norm(ap)), torch.stack(torch._foreach_norm(ar))
                if group["clamp"] is not None:
                    wn = wn.clamp(0.0, group["clamp"])
                torch._foreach_mul_(ar, _trust(wn, rn))
            _FOREACH.add_(params, r, alpha=-lr)
        return loss
