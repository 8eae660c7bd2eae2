"""Sharpness-aware minimization (SAM, Foret et al. 2020, arXiv:2010.01412) and its adaptive form (ASAM, Kwon et al.
2021, arXiv:2102.11600): an optimizer wrapper with the community API of ``davda54/sam``
(``SAM(params, base_optimizer, rho=0.05, adaptive=False, **kwargs)``, ``first_step``/``second_step``,
``step(closure)``).

SAM minimizes the worst loss in a ball around the weights, ``min_w max_{||e|| <= rho} L(w + e)``, with the
first-order solution of the inner problem::

    SAM:   e(w) = rho * g / ||g||                      g = grad L(w), the norm over every parameter at once
    ASAM:  e(w) = rho * T^2 g / ||T g||                T = diag(|w| + eta), elementwise (scale invariant)
    update: the base optimizer's step at w with the gradient grad L(w + e(w))

(a ``1e-12`` is added to the norm, as the reference implementations do). ``eta = 0`` is ``davda54/sam``'s and
``pytorch_optimizer``'s ASAM; Kwon et al. use ``eta = 0.01`` (the default here; only used with ``adaptive``).
Each step costs two forward and backward passes.

**Two passes, one closure.** ``step(closure)``:

1. the gradient at ``w``: taken from the parameters' ``.grad`` when the caller already computed it (the
   ``davda54`` loop: ``loss.backward(); optimizer.step(closure)``), else from one call of the closure (the
   engine's closure path, as for the second-order optimizers: :class:`~traintricks.training.Trainer` calls
   ``step(closure)`` with no gradients; its closure's first call returns the loss of the loop's own forward pass
   with its graph, so no pass is repeated);
2. :meth:`first_step`: ``w <- w + e(w)`` (the old weights kept);
3. the closure again at ``w + e``, then :meth:`second_step`: the old weights back and the base optimizer's step.

A closure may return the loss with its graph (SAM differentiates it) or differentiate it itself and return it
(``davda54``'s form): SAM calls ``backward`` only when the closure left no gradient.

**Batch-norm statistics from the first pass only.** The pass at ``w + e`` must not move the running statistics
(it is not a forward pass of the model being trained, and a second update per step would count each batch twice).
Given ``model=``, SAM saves every buffer of the model before the second pass and copies them back after it (exact
for any norm layer: running mean and variance, ``num_batches_tracked``, batch renormalization's statistics; momentum
0 would still count the batch in ``num_batches_tracked`` and in a cumulative average). The recipe passes the run's
model; in a hand-written loop pass ``model=`` or wrap the second pass in :func:`frozen_buffers`.

Gradient transforms (clipping, noise) act on the gradient of the update, at ``w + e``: ``grad_transform``
(default ``None``), called as ``grad_transform(params)`` before the base step (the trainer sets it from its
``grad_transforms``). ``state_dict`` is the base optimizer's (momentum buffers included) with SAM's ``rho``,
``adaptive`` and ``eta`` in its parameter groups; the parameter groups are shared with the base optimizer, so a
learning-rate schedule on SAM drives the base.

Raises ``ValueError`` for ``rho < 0`` or ``eta < 0``, a base optimizer that needs a closure itself, and
``step()`` without a closure.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

__all__ = ["SAM", "frozen_buffers"]


@contextmanager
def frozen_buffers(module: nn.Module | None) -> Iterator[None]:
    """Run the block with ``module``'s buffers (batch-norm running statistics, ``num_batches_tracked``...) put
    back as they were when it ends: forward passes inside it leave no trace in them. ``None``: does nothing."""
    saved = [(b, b.clone()) for b in module.buffers()] if module is not None else []
    try:
        yield
    finally:
        with torch.no_grad():
            for b, old in saved:
                b.copy_(old)


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization around ``base_optimizer`` (see the module docstring for the math).

    Args:
        params: parameters or parameter groups (a group may set its own ``rho``, ``adaptive``, ``eta``).
        base_optimizer: the optimizer class (or factory) of the update, built as
            ``base_optimizer(self.param_groups, **kwargs)``.
        rho: radius of the neighbourhood (Foret et al.: 0.05; ASAM is usually run with a larger one, e.g. 0.5-2).
        adaptive: ASAM (Kwon et al. 2021): the perturbation scaled by ``T = |w| + eta`` elementwise.
        eta: ASAM's offset (Kwon et al.: 0.01; ``davda54/sam``: 0).
        model: the module whose buffers the second forward pass must not change (batch-norm statistics).
        **kwargs: the base optimizer's options (``lr``, ``momentum``, ...).
    """

    needs_closure = True
    #: called as ``grad_transform(params)`` on the update's gradient (at ``w + e``) before the base step
    grad_transform: Callable | None = None

    def __init__(self, params: Iterable, base_optimizer: Callable[..., torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.01, *, model: nn.Module | None = None, **kwargs: Any) -> None:
        if not rho >= 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not callable(base_optimizer):
            raise TypeError(f"base_optimizer must be an optimizer class or factory, got {base_optimizer!r}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        if getattr(self.base_optimizer, "needs_closure", False):
            raise ValueError(f"base_optimizer: {type(self.base_optimizer).__name__} computes its own gradients from "
                             "a closure; SAM needs a first-order optimizer")
        self.param_groups = self.base_optimizer.param_groups     # shared: schedules on SAM drive the base
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model
        self._old: dict[torch.Tensor, torch.Tensor] = {}

    def _with_grad(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def perturbation(self) -> dict[torch.Tensor, torch.Tensor]:
        """``e(w)`` for every parameter with a gradient (SAM: ``rho g / ||g||``; ASAM: ``rho T^2 g / ||T g||``),
        the norm over all of them; computed on the device (no host read)."""
        scaled = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    t = p.abs() + group["eta"] if group["adaptive"] else None
                    scaled.append((p, group, t))
        if not scaled:
            return {}
        norm = torch.linalg.vector_norm(torch.stack([
            torch.linalg.vector_norm(p.grad * t if t is not None else p.grad).to(torch.float64)
            for p, _, t in scaled]))
        out = {}
        for p, group, t in scaled:
            scale = (group["rho"] / (norm + 1e-12)).to(p.dtype)
            out[p] = (p.grad * t * t if t is not None else p.grad) * scale
        return out

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """``w <- w + e(w)`` from the gradients in ``.grad`` (the old weights are kept for :meth:`second_step`)."""
        for p, e in self.perturbation().items():
            self._old[p] = p.detach().clone()
            p.add_(e)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Put the old weights back and take the base optimizer's step with the gradients in ``.grad`` (those at
        ``w + e``), after ``grad_transform``."""
        for p, old in self._old.items():
            p.copy_(old)
        self._old = {}
        if self.grad_transform is not None:
            params = self._with_grad()
            if params:
                self.grad_transform(params)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:
        """One SAM step (module docstring): the gradient at ``w`` (present in ``.grad``, or from the closure),
        ``first_step``, the closure at ``w + e`` with the model's buffers frozen, ``second_step``. Returns the
        loss at ``w`` when the closure computed it, else the loss at ``w + e`` (detached)."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss (at the perturbed weights)")
        first = None
        if not self._with_grad():                         # the engine's path: the first pass is the closure's
            first = self._evaluate(closure)
        self.first_step(zero_grad=True)
        with frozen_buffers(self.model):
            second = self._evaluate(closure)
        self.second_step()
        out = first if first is not None else second
        return out.detach() if isinstance(out, torch.Tensor) else out

    def _evaluate(self, closure: Callable) -> Any:
        """Call the closure with autograd on; differentiate its loss unless it did so itself."""
        with torch.enable_grad():
            loss = closure()
            if not self._with_grad():                     # the closure returned its loss undifferentiated
                if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                    raise ValueError("SAM: the closure neither computed gradients nor returned a loss with a graph")
                loss.backward()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __repr__(self) -> str:
        g = self.param_groups[0]
        return (f"SAM({type(self.base_optimizer).__name__}, rho={g['rho']}, adaptive={g['adaptive']}, "
                f"eta={g['eta']})")
