"""First-order optimizers from their update rules, as ``torch.optim.Optimizer`` subclasses.

Each ``step()`` updates every tensor of a parameter group at once with multi-tensor ``torch._foreach_*``
operations (one kernel launch per operation for the whole group), or, where ATen has a fused CPU/GPU
kernel for exactly this update (SGD, Adam, AdamW, Adagrad), with that kernel (``fused=True``, the
default when available; ``fused=False`` runs the readable foreach form). Both are tested equal to
``torch.optim`` after 100 steps in float64. Notation: ``g`` gradient, ``lr`` learning rate, ``wd``
weight decay, ``t`` step count from 1.

**SGD with momentum** (Polyak 1964; Nesterov as in Sutskever et al. 2013, the notes' form)::

    g <- g + wd * theta
    b <- mu * b + (1 - dampening) * g           (b = g at the first step)
    d <- g + mu * b  (nesterov)  or  b
    theta <- theta - lr * d

The notes write momentum as a velocity ``V <- mu V - lr g(theta + mu V)``, ``theta <- theta + V`` (the
gradient taken at the look-ahead point). With ``phi = theta + mu V`` (the look-ahead parameters) this is
exactly the update above on ``phi`` with ``b = -V / lr`` (for a constant rate): we store ``phi`` and the
tests check both trajectories coincide.

**Adagrad** (Duchi, Hazan & Singer 2011): ``s <- s + g^2``; ``theta <- theta - lr_t g / (sqrt(s) + eps)``
with ``lr_t = lr / (1 + (t - 1) * lr_decay)``.

**RMSprop** (Hinton, Coursera lecture 6e): ``s <- a s + (1 - a) g^2``; optionally centred with
``m <- a m + (1 - a) g`` and ``s - m^2`` in place of ``s``; ``d = g / (sqrt(s) + eps)``; with momentum
``b <- mu b + d``, ``theta <- theta - lr b``, else ``theta <- theta - lr d``.

**Adam** (Kingma & Ba 2015, arXiv:1412.6980)::

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    theta <- theta - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

with L2 weight decay added to the gradient; **AdamW** (Loshchilov & Hutter 2019, arXiv:1711.05101)
decouples it: ``theta <- theta (1 - lr wd)`` before the Adam step.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def _check_range(name: str, value: float, low: float, high: float | None = None, high_open: bool = True) -> None:
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:
        rng = f"[{low}, {high}{')' if high_open else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {'in ' + rng if high is not None else rng}, got {value}")


def check_betas(betas) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``: two numbers in ``[0, 1)``, returned as a tuple of floats."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
    return float(betas[0]), float(betas[1])


def adam_moments_(m: list[torch.Tensor], v: list[torch.Tensor], grads: list[torch.Tensor], b1: float, b2: float) -> None:
    """Adam's moment estimates in place: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``."""
    torch._foreach_lerp_(m, grads, 1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - b2)


class Optimizer(torch.optim.Optimizer):
    """Shared checks: learning rate and weight decay at construction; dense real gradients at each step."""

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        _check_range("lr", defaults.get("lr", 0.0), 0.0)
        _check_range("weight_decay", defaults.get("weight_decay", 0.0), 0.0)
        super().__init__(params, defaults)

    def _group_tensors(self, group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            params.append(p)
            grads.append(p.grad)
        return params, grads

    def _state_list(self, params: list[torch.Tensor], key: str, init=torch.zeros_like) -> list[torch.Tensor]:
        out = []
        for p in params:
            st = self.state[p]
            if key not in st:
                st[key] = init(p)
            out.append(st[key])
        return out

    def _steps(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-parameter step counters (float tensors, as torch.optim keeps them), incremented."""
        steps = self._state_list(params, "step", lambda p: torch.zeros((), dtype=torch.float32))
        torch._foreach_add_(steps, 1.0)
        return steps

    @staticmethod
    def _fused_ok(params: list[torch.Tensor]) -> bool:
        return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) \
            and len({(p.device, p.dtype) for p in params}) == 1


class SGD(Optimizer):
    """SGD with momentum and Nesterov momentum (see the module docstring)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, fused: bool | None = None) -> None:
        _check_range("momentum", momentum, 0.0, 1.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, fused=fused))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params, grads = self._group_tensors(group)
            if not params:
                continue
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            first = mu != 0 and "momentum_buffer" not in self.state[params[0]]
            bufs = self._state_list(params, "momentum_buffer") if mu != 0 else []
            # ATen's fused SGD kernel wins on large tensors (2x at 10M parameters) but loses to the
            # multi-tensor path on many small ones: use it when tensors average >= 64k elements
            big = sum(p.numel() for p in params) >= 65536 * len(params) or params[0].is_cuda
            if (group["fused"] is True or (group["fused"] is None and big)) and self._fused_ok(params):
                torch._fused_sgd_(params, grads, bufs, weight_decay=wd, momentum=mu, lr=lr,
                                  dampening=group["dampening"], nesterov=group["nesterov"], maximize=False,
                                  is_first_step=first)
                continue
            fresh = bool(wd)
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if mu:
                if first:
                    torch._foreach_copy_(bufs, grads)
                else:
                    torch._foreach_mul_(bufs, mu)
                    torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
                if group["nesterov"]:
                    if fresh:                 # our own copy already: update it in place
                        torch._foreach_add_(grads, bufs, alpha=mu)
                    else:
                        grads = torch._foreach_add(grads, bufs, alpha=mu)
                else:
                    grads = bufs
            torch._foreach_add_(params, grads, alpha=-lr)
        return loss


class Adagrad(Optimizer):
    """Adagrad (Duchi et al. 2011); see the module docstring."""

    def __init__(self, params: Iterable, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, fused: bool | None = None) -> None:
        _check_range("lr_decay", lr_decay, 0.0)
        _check_range("eps", eps, 0.0)
        _check_range("initial_accumulator_value", initial_accumulator_value, 0.0)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value, fused=fused))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params, grads = self._group_tensors(group)
            if not params:
                continue
            init = group["initial_accumulator_value"]
            sums = self._state_list(params, "sum", lambda p: torch.full_like(p, init))
            steps = self._steps(params)
            lr, wd, eps, decay = group["lr"], group["weight_decay"], group["eps"], group["lr_decay"]
            if group["fused"] is not False and self._fused_ok(params):
                torch._fused_adagrad_(params, grads, sums, steps, lr=lr, lr_decay=decay, weight_decay=wd, eps=eps,
                                      maximize=False)
                continue
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_addcmul_(sums, grads, grads, value=1.0)
            std = torch._foreach_sqrt(sums)
            torch._foreach_add_(std, eps)
            clr = [-lr / (1 + (float(s) - 1) * decay) for s in steps]
            torch._foreach_mul_(std, [1.0 / c for c in clr])       # divide by -clr: params += g / (std / -clr)
            torch._foreach_addcdiv_(params, grads, std)
        return loss


class RMSprop(Optimizer):
    """RMSprop (Hinton, lecture 6e), optionally centred and with momentum; see the module docstring."""

    def __init__(self, params: Iterable, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 fused: bool | None = None) -> None:
        _check_range("alpha", alpha, 0.0, 1.0)
        _check_range("eps", eps, 0.0)
        _check_range("momentum", momentum, 0.0, 1.0)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, fused=fused))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params, grads = self._group_tensors(group)
            if not params:
                continue
            steps = self._steps(params)
            a, eps, lr, wd, mu = group["alpha"], group["eps"], group["lr"], group["weight_decay"], group["momentum"]
            sq = self._state_list(params, "square_avg")
            if not (mu or group["centered"]) and group.get("fused") is not False and self._fused_ok(params):
                # Plain RMSprop is Adam with beta1 = 0 and beta2 = alpha once Adam's bias correction is undone:
                # sqrt(v / c) + eps = (sqrt(v) + eps sqrt(c)) / sqrt(c), c = 1 - alpha^t, so Adam with
                # lr / sqrt(c) and eps / sqrt(c) takes exactly the step lr g / (sqrt(v) + eps): one fused
                # pass instead of five (it keeps g in an extra "exp_avg" buffer).
                c = (1 - a ** float(steps[0])) ** 0.5
                m = self._state_list(params, "exp_avg")
                torch._fused_adam_(params, grads, m, sq, [], steps, lr=lr / c, beta1=0.0,
                                   beta2=a, weight_decay=wd, eps=eps / c, amsgrad=False, maximize=False)
                continue
            if wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            torch._foreach_mul_(sq, a)
            torch._foreach_addcmul_(sq, grads, grads, value=1 - a)
            if group["centered"]:
                gavg = self._state_list(params, "grad_avg")
                torch._foreach_lerp_(gavg, grads, 1 - a)
                denom = torch._foreach_addcmul(sq, gavg, gavg, value=-1)
                torch._foreach_sqrt_(denom)
            else:
                denom = torch._foreach_sqrt(sq)
            torch._foreach_add_(denom, eps)
            if mu:
                bufs = self._state_list(params, "momentum_buffer")
                torch._foreach_mul_(bufs, mu)
                torch._foreach_addcdiv_(bufs, grads, denom)
                torch._foreach_add_(params, bufs, alpha=-lr)
            else:
                torch._foreach_addcdiv_(params, grads, denom, value=-lr)
        return loss


class Adam(Optimizer):
    """Adam (1412.6980) with L2 weight decay; ``decoupled_weight_decay=True`` is AdamW (1711.05101)."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 decoupled_weight_decay: bool = False, fused: bool | None = None) -> None:
        betas = check_betas(betas)
        _check_range("eps", eps, 0.0)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      decoupled_weight_decay=decoupled_weight_decay, fused=fused))

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params, grads = self._group_tensors(group)
            if not params:
                continue
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            m, v = self._state_list(params, "exp_avg"), self._state_list(params, "exp_avg_sq")
            vmax = self._state_list(params, "max_exp_avg_sq") if group["amsgrad"] else []
            steps = self._steps(params)
            decoupled = group["decoupled_weight_decay"]
            if group["fused"] is not False and self._fused_ok(params):
                kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
                kernel(params, grads, m, v, vmax, steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps,
                       amsgrad=group["amsgrad"], maximize=False)
                continue
            if wd and decoupled:
                torch._foreach_mul_(params, 1 - lr * wd)
            elif wd:
                grads = torch._foreach_add(grads, params, alpha=wd)
            adam_moments_(m, v, grads, b1, b2)
            if group["amsgrad"]:
                torch._foreach_maximum_(vmax, v)
            t = [float(s) for s in steps]
            denom = torch._foreach_sqrt(vmax if group["amsgrad"] else v)
            torch._foreach_div_(denom, [(1 - b2 ** ti) ** 0.5 for ti in t])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, m, denom, [-lr / (1 - b1 ** ti) for ti in t])
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (1711.05101): ``theta <- theta (1 - lr wd)``, then the Adam step."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True, fused=fused)
