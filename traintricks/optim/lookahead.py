"""Lookahead (Zhang, Lucas, Hinton & Ba 2019, "Lookahead Optimizer: k steps forward, 1 step back",
arXiv:1907.08610): any optimizer's weights (the *fast* weights) explore for ``k`` steps, then the *slow* weights
move part of the way towards them and the fast weights restart from there.

With slow weights ``phi`` (initialized to the parameters when the wrapper is built) and the inner optimizer's
update ``theta <- A(theta, g)``, after every ``k``-th step of the inner optimizer:

    phi   <- phi + alpha * (theta - phi)          (alpha in (0, 1]: the slow step size)
    theta <- phi

``alpha = 1`` is the inner optimizer unchanged. The inner optimizer's own state (momentum, Adam's moments) is
kept as it is at the synchronization (the paper's default, ``pullback_momentum = "none"`` in
``pytorch_optimizer``). Cost: one extra copy of the parameters, and every ``k`` steps one multi-tensor lerp and
one copy (``torch._foreach_*``).

The wrapper is a :class:`torch.optim.Optimizer`: ``param_groups`` *is* the inner optimizer's list (a learning-rate
schedule built on the wrapper changes the inner rates), ``state`` the inner optimizer's state, ``defaults`` its
defaults; ``state_dict()`` holds the inner optimizer's state dict, the slow weights (in parameter order) and the
step count, so a resumed run continues exactly (``torch.load(weights_only=True)`` reads it).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import torch


class Lookahead(torch.optim.Optimizer):
    """Wrap ``optimizer``: every ``k`` of its steps, ``slow += alpha * (fast - slow)`` and ``fast = slow``.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (ours or torch's), already built on the parameters.
        k: inner steps between synchronizations (``k >= 1``).
        alpha: the slow weights' step size in ``(0, 1]``.

    Raises ``ValueError`` for ``k < 1``, ``alpha`` outside ``(0, 1]``, a wrapped object that is not an optimizer,
    and (in :meth:`load_state_dict`) a state whose slow weights do not match the parameters (count or shapes).

    Works with the closure path (``needs_closure`` and ``grad_transform`` reach the inner optimizer). The slow
    weights are float tensors like the parameters, on their device.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.optimizer, self.k, self.alpha = optimizer, k, float(alpha)
        self.steps = 0                              # inner steps taken
        # torch.optim.Optimizer's hook tables (not calling its __init__: the groups are the inner optimizer's)
        self._optimizer_step_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict[int, Callable] = OrderedDict()
        self._patch_step_function()
        self.slow: dict[torch.Tensor, torch.Tensor] = {}
        self._init_slow()

    # ------------------------------------------------------------- the inner optimizer, seen through the wrapper
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @property
    def needs_closure(self) -> bool:
        return bool(getattr(self.optimizer, "needs_closure", False))

    @property
    def grad_transform(self):
        return getattr(self.optimizer, "grad_transform", None)

    @grad_transform.setter
    def grad_transform(self, fn) -> None:
        if not hasattr(self.optimizer, "grad_transform"):
            raise AttributeError(f"{type(self.optimizer).__name__} has no grad_transform hook")
        self.optimizer.grad_transform = fn

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "k": self.k, "alpha": self.alpha, "steps": self.steps,
                "slow": self.slow}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Lookahead({self.optimizer!r}, k={self.k}, alpha={self.alpha})"

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _init_slow(self) -> None:
        for p in self._params():
            if p not in self.slow:
                self.slow[p] = p.detach().clone()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)
        self._init_slow()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ----------------------------------------------------------------------------------------------- the step
    def step(self, closure: Callable | None = None) -> Any:
        """The inner optimizer's step (with ``closure`` when given); every ``k``-th one also synchronizes."""
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.steps += 1
        if self.steps % self.k == 0:
            self.synchronize()
        return loss

    @torch.no_grad()
    def synchronize(self) -> None:
        """``slow += alpha * (fast - slow)``; ``fast = slow`` (multi-tensor, grouped by device and dtype)."""
        by_kind: dict[tuple, tuple[list, list]] = {}
        for p in self._params():
            fast, slow = by_kind.setdefault((p.device, p.dtype), ([], []))
            fast.append(p)
            slow.append(self.slow[p])
        for fast, slow in by_kind.values():
            torch._foreach_lerp_(slow, fast, self.alpha)
            torch._foreach_copy_(fast, slow)

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": inner state dict, "slow": [slow weights in parameter order], "steps": n, "k", "alpha"}``."""
        return {"optimizer": self.optimizer.state_dict(), "slow": [self.slow[p].clone() for p in self._params()],
                "steps": self.steps, "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        params = self._params()
        missing = [k for k in ("slow", "optimizer", "steps") if k not in state_dict]
        if missing:
            raise ValueError(f"Lookahead.load_state_dict: not a Lookahead state (no {', '.join(map(repr, missing))}); "
                             "an inner optimizer's state loads with lookahead.optimizer.load_state_dict(...)")
        slow = list(state_dict["slow"])
        if len(slow) != len(params) or any(s.shape != p.shape for s, p in zip(slow, params)):
            raise ValueError(f"Lookahead state: {len(slow)} slow weights of shapes {[tuple(s.shape) for s in slow]} "
                             f"do not match the {len(params)} parameters of the optimizer")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        params = self._params()
        self.slow = {p: s.to(device=p.device, dtype=p.dtype).clone() for p, s in zip(params, slow)}
        self.steps = int(state_dict["steps"])
