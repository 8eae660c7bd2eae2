"""Stochastic depth (Huang, Sun, Liu, Sedra & Weinberger 2016, arXiv:1603.09382).

A residual block computes ``x + f(x)``. With stochastic depth the branch survives with probability
``p_l`` in training and is otherwise skipped, and at inference it is scaled by its survival
probability (the paper's eq. 5, the expectation of the training output):

    training:  x + b * f(x),  b ~ Bernoulli(p_l)          inference:  x + p_l * f(x)

Two forms:

* :class:`StochasticDepth` ``(p, mode)`` and :func:`stochastic_depth` ``(input, p, mode, training)`` are
  torchvision's (``torchvision.ops``): applied to the branch's *output*, ``x + sd(f(x))``, with the *drop*
  probability ``p``; the survivors are scaled by ``1 / (1 - p)`` in training ("inverted", like dropout) and
  inference is the identity -- the same expectation as the paper's rule, moved from inference to training.
* :func:`add_stochastic_depth` ``(branch, survival_prob, mode)`` is the paper's form: it turns the branch
  module itself into a :class:`StochasticDepthBranch` (its class is swapped for a subclass, as
  ``torch.nn.utils.parametrize`` does; the module object, its attributes, parameters, buffers and their names stay
  what they were), so ``named_parameters()``, ``state_dict()``, ``get_parameter``, ``torch.func.functional_call``
  and strict loading of the plain model's weights all see one name per parameter. ``mode="row"`` draws ``b`` per
  sample (as timm's DropPath; the default, what the SPEC asks); ``mode="batch"`` draws one ``b`` per mini-batch as
  in the paper, and in eager mode does not compute ``f`` when it is dropped (the paper's speed-up; under
  ``torch.compile`` the branch is computed and multiplied by ``b``, which keeps the graph whole).

Survival probabilities fall linearly with depth (the paper's eq. 4): block ``l`` of ``L`` gets
``p_l = 1 - l / L * (1 - p_L)``, from nearly 1 at the input to ``p_L`` (0.5 in the paper) at the
output; :func:`linear_survival` computes them.
"""
from __future__ import annotations

import torch
from torch import nn

from .batchnorm import _fx_leaf
from .class_swap import ClassSwapMixin

_BRANCH = "branch."


def linear_survival(num_blocks: int, last: float = 0.5) -> list[float]:
    """``p_l = 1 - l / L * (1 - p_L)`` for ``l = 1..L``: the paper's linear decay rule."""
    if num_blocks < 1:
        raise ValueError(f"linear_survival: need at least one block, got {num_blocks}")
    if not 0.0 < last <= 1.0:
        raise ValueError(f"linear_survival: the last survival probability must be in (0, 1], got {last}")
    return [1.0 - l / num_blocks * (1.0 - last) for l in range(1, num_blocks + 1)]


def _check_tv(p: float, mode: str) -> None:
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision's ``stochastic_depth``: zero the whole input per sample (``mode="row"``: a mask of shape
    (N, 1, ..., 1)) or for the whole batch (``mode="batch"``) with *drop* probability ``p``, scale the kept
    ones by ``1 / (1 - p)``; identity when not ``training`` or ``p == 0``. Meant for the residual branch's
    output: ``x + stochastic_depth(f(x), p, "row", self.training)``.

    The mask is ``bernoulli_(1 - p)`` on a tensor of the input's dtype, as torchvision draws it (the same
    values under the same seed). Raises ``ValueError`` for ``p`` outside ``[0, 1]`` or another mode."""
    _check_tv(p, mode)
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth(p, mode)`` module: :func:`stochastic_depth` on its input (the residual
    branch's output, ``x + sd(f(x))``) with *drop* probability ``p`` and ``mode`` ``"row"`` (per sample) or
    ``"batch"``; identity in eval mode. Any input shape (N, ...); output of the same shape and dtype. One
    ``call_module`` node under ``torch.fx`` (follows ``train()``/``eval()`` after tracing).

    Raises ``ValueError`` (torchvision's messages) for ``p`` outside ``[0, 1]`` or another mode -- at
    construction (torchvision: at the first call) -- and ``TypeError`` when given a module: the paper's form
    that wraps a branch with a survival probability is :func:`add_stochastic_depth`."""

    def __init__(self, p: float, mode: str) -> None:
        if isinstance(p, nn.Module):
            raise TypeError("StochasticDepth(p, mode) is torchvision's module (drop probability p, applied to the "
                            "branch's output); to give a residual branch stochastic depth with a survival "
                            "probability use add_stochastic_depth(branch, survival_prob, mode)")
        _check_tv(p, mode)
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.fx.Proxy):
            node = _fx_leaf(self, input)
            if node is not None:
                return node
        return stochastic_depth(input, self.p, self.mode, self.training)

    def reset_parameters(self) -> None:
        """Nothing to reset (no parameters or buffers)."""

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


# ---------------------------------------------------------------------------------------- the paper's form
def _branch_class(base: type) -> type:
    """The subclass ``StochasticDepth<Base>`` of ``(StochasticDepthBranch, base)``, one per base class."""
    return StochasticDepthBranch.subclass(base)


def _old_branch_level(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """Before loading: a checkpoint of the old wrapper, with the branch's keys one ``branch.`` level
    deeper, loads (the level is dropped when every key of the module has it and the module has no ``branch``)."""
    own = [k for k in state_dict if k.startswith(prefix)]
    inner = prefix + _BRANCH
    has_branch = "branch" in module._modules or "branch" in module._parameters or "branch" in module._buffers
    if not own or has_branch or not all(k.startswith(inner) for k in own):
        return
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[prefix + k[len(inner):] if k.startswith(inner) else k] = v


class StochasticDepthBranch(ClassSwapMixin, nn.Module):
    """A residual branch ``f`` with the paper's stochastic depth: ``b * f(x)`` in training (``b ~
    Bernoulli(survival_prob)`` per sample for ``mode="row"``, per call for ``"batch"``), ``survival_prob * f(x)`` at
    inference. Made by :func:`add_stochastic_depth` (the branch's class becomes a subclass of this one and of its
    own class; ``isinstance`` with either holds); undone by :func:`remove_stochastic_depth`.

    ``mode="batch"`` in eager training does not run a dropped branch: it returns zeros of the branch's output
    shape and dtype for this input shape, learned from the branch's last kept call with that input shape; on
    the first drop before any kept call the branch is run once under ``no_grad`` and every buffer, flag and RNG
    state it changed is rolled back (:class:`traintricks.memory.ForwardState`), so a dropped batch never moves
    its batch-norm statistics. Under ``torch.fx`` the branch is one ``call_module`` node."""

    prefix = "StochasticDepth"
    survival_prob: float
    stochastic_depth_mode: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = type(self).base_class
        if isinstance(x, torch.fx.Proxy):
            node = _fx_leaf(self, x)
            if node is not None:
                return node
        p = self.survival_prob
        if not self.training:
            out = base.forward(self, x)
            return out if p == 1.0 else out * p
        if self.stochastic_depth_mode == "batch":
            if torch.compiler.is_compiling():          # no data-dependent branch inside a graph
                out = base.forward(self, x)
                return out * torch.empty((1,) * out.ndim, dtype=out.dtype, device=out.device).bernoulli_(p)
            key = (tuple(x.shape), x.dtype, x.device)
            if float(torch.rand(())) < p:                # a CPU draw: no device synchronization
                out = base.forward(self, x)
                self._sd_out[key] = (out.shape, out.dtype)
                return out
            known = self._sd_out.get(key)
            if known is None:                            # dropped before any kept call: learn the shape, undo
                from ..memory.recomputation import ForwardState
                state = ForwardState(self, [x])
                try:
                    with torch.no_grad():
                        out = base.forward(self, x)
                finally:
                    state.rollback()
                known = self._sd_out[key] = (out.shape, out.dtype)
            return torch.zeros(known[0], dtype=known[1], device=x.device)
        out = base.forward(self, x)
        keep = (torch.rand((out.shape[0],) + (1,) * (out.ndim - 1), device=out.device) < p).to(out.dtype)
        return out * keep

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        _old_branch_level(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        own = type(self).base_class.extra_repr(self)
        sd = f"survival_prob={self.survival_prob:.4g}, stochastic_depth_mode={self.stochastic_depth_mode}"
        return f"{own}, {sd}" if own else sd


def add_stochastic_depth(branch: nn.Module, survival_prob: float = 0.8, mode: str = "row") -> nn.Module:
    """Give the residual branch ``branch`` the paper's stochastic depth in place and return it (see
    :class:`StochasticDepthBranch`): the block keeps calling ``branch`` and adding the identity, ``x + branch(x)``.

    Args:
        branch: the residual branch (any module taking one tensor (N, ...) and returning one whose first dim is
            N); it stays the same object with the same parameter and buffer names.
        survival_prob: ``p_l`` in ``(0, 1]`` (:func:`linear_survival` gives the paper's per-block values).
        mode: ``"row"`` (one ``b`` per sample) or ``"batch"`` (one per call; a dropped branch is not computed).

    Raises ``ValueError`` for a bad ``survival_prob`` or ``mode``, or a branch that already has stochastic depth
    (change ``branch.survival_prob`` instead); ``TypeError`` for a non-module."""
    if not isinstance(branch, nn.Module):
        raise TypeError(f"add_stochastic_depth takes the branch module, got {type(branch).__name__}")
    if isinstance(branch, StochasticDepthBranch):
        raise ValueError("add_stochastic_depth: the branch already has stochastic depth (set its survival_prob "
                         "instead, or remove_stochastic_depth first)")
    if not 0.0 < survival_prob <= 1.0:
        raise ValueError(f"add_stochastic_depth: survival_prob must be in (0, 1], got {survival_prob}")
    if mode not in ("row", "batch"):
        raise ValueError(f"add_stochastic_depth: mode must be 'row' or 'batch', got {mode!r}")
    branch.__class__ = _branch_class(type(branch))
    branch.survival_prob, branch.stochastic_depth_mode = float(survival_prob), mode
    branch._sd_out = {}
    return branch


def remove_stochastic_depth(branch: nn.Module) -> nn.Module:
    """Undo :func:`add_stochastic_depth` in place (the branch's own class back) and return the branch."""
    if not isinstance(branch, StochasticDepthBranch):
        raise ValueError(f"remove_stochastic_depth: {type(branch).__name__} has no stochastic depth")
    for name in ("survival_prob", "stochastic_depth_mode", "_sd_out"):
        branch.__dict__.pop(name, None)
    branch.__class__ = type(branch).base_class
    return branch
