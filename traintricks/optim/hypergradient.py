"""Hypergradient descent (Baydin, Cornish, Martínez Rubio, Schmidt & Wood 2018, arXiv:1703.04782):
the learning rate itself is learned by gradient descent, **one rate for all tensors**, updated once per step.

The update ``theta_t = theta_{t-1} - alpha * u_{t-1}`` makes the loss a function of ``alpha``, with
``d f(theta_t) / d alpha = -grad f(theta_t) . u_{t-1}``. So before each step

    alpha_t = alpha_{t-1} + beta * (g_t . u_{t-1})          (dot product over every parameter)

**SGD-HD**: ``u = g`` (the previous gradient), then ``theta <- theta - alpha_t g_t``.
**Adam-HD**: ``u = m_hat / (sqrt(v_hat) + eps)`` (the previous Adam direction), then the Adam step with
``alpha_t``. ``beta`` is the hypergradient rate. The current rate is ``param_groups[i]["lr"]`` (all groups
share it) and is saved in ``state_dict``.

State is per parameter: ``u_{t-1}`` of a parameter that had no gradient at the previous step is 0 (it did
not move, so it adds nothing to the dot product), and Adam-HD's bias corrections use each parameter's own
step count. ``maximize=True`` (keyword-only) ascends: ``g`` is the negated gradient throughout.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .first_order import Optimizer, _check_range, _compiling, _eagerly, _num, adam_moments_, check_betas


class _HD(Optimizer):
    def step(self, closure=None):
        """One step (see the module docstring); ``closure`` (optional) re-evaluates and returns the loss.

        Under ``torch.compile`` the step runs eagerly (a graph break): the shared rate is a Python number
        updated from a host read of ``g . u`` each step; traced, it would be a constant that changes every
        step (a recompilation per step)."""
        if _compiling():
            return _eagerly(self._step, closure)
        return self._step(closure)

    def _all(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for group in self.param_groups:
            p, g = self._group_tensors(group)
            if group.get("maximize"):
                g = torch._foreach_neg(g) if g else g
            params += p
            grads += g
        return params, grads

    def _hyper_step(self, params: list[torch.Tensor], grads: list[torch.Tensor], key: str) -> float:
        """Update the shared rate from ``g_t . u_{t-1}`` over the parameters that have a ``u_{t-1}``; returns it."""
        lr = _num(self.param_groups[0]["lr"])
        pairs = [(g, self.state[p][key]) for p, g in zip(params, grads) if key in self.state[p]]
        if pairs:
            dot = torch.stack([torch.dot(g.reshape(-1), u.reshape(-1)) for g, u in pairs]).sum()
            lr = lr + self.param_groups[0]["hypergrad_lr"] * float(dot)
            for group in self.param_groups:
                group["lr"] = lr
        return lr

    def _store_prev(self, params: list[torch.Tensor], values: list[torch.Tensor], key: str) -> None:
        """Keep this step's ``u`` for the parameters that moved; the others' ``u`` is 0 (their entry is dropped)."""
        moved = {id(p) for p in params}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in moved and p in self.state:
                    self.state[p].pop(key, None)
        for p, u in zip(params, values):
            self.state[p][key] = u


class SGDHD(_HD):
    """SGD with hypergradient descent on its single learning rate (1703.04782)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, hypergrad_lr: float = 1e-4, weight_decay: float = 0.0,
                 *, maximize: bool = False) -> None:
        _check_range("hypergrad_lr", hypergrad_lr, 0.0)
        super().__init__(params, dict(lr=lr, hypergrad_lr=hypergrad_lr, weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def _step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        params, grads = self._all()
        if not params:
            return loss
        wd = self.param_groups[0]["weight_decay"]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        lr = self._hyper_step(params, grads, "prev_grad")
        self._store_prev(params, [g.clone() for g in grads], "prev_grad")
        torch._foreach_add_(params, grads, alpha=-lr)
        return loss


class AdamHD(_HD):
    """Adam with hypergradient descent on its single learning rate (1703.04782)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, hypergrad_lr: float = 1e-7, weight_decay: float = 0.0, *,
                 maximize: bool = False) -> None:
        betas = check_betas(betas)
        _check_range("hypergrad_lr", hypergrad_lr, 0.0)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, hypergrad_lr=hypergrad_lr,
                                      weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def _step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        params, grads = self._all()
        if not params:
            return loss
        (b1, b2), eps, wd = self.param_groups[0]["betas"], self.param_groups[0]["eps"], self.param_groups[0]["weight_decay"]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        lr = self._hyper_step(params, grads, "prev_dir")
        m, v = self._state_list(params, "exp_avg"), self._state_list(params, "exp_avg_sq")
        t = [float(s) for s in self._steps(params, self.param_groups[0])]    # each parameter's own step count
        adam_moments_(m, v, grads, b1, b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [(1 - b2 ** ti) ** 0.5 for ti in t])
        torch._foreach_add_(denom, eps)
        direction = torch._foreach_div(m, denom)
        torch._foreach_div_(direction, [1 - b1 ** ti for ti in t])
        self._store_prev(params, direction, "prev_dir")
        torch._foreach_add_(params, direction, alpha=-lr)
        return loss
