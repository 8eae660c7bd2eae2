"""Stochastic depth (Huang, Sun, Liu, Sedra & Weinberger 2016, arXiv:1603.09382).

A residual block computes ``x + f(x)``. With stochastic depth the branch survives with probability
``p_l`` in training and is otherwise skipped, and at inference it is scaled by its survival
probability (the paper's eq. 5, the expectation of the training output):

    training:  x + b * f(x),  b ~ Bernoulli(p_l)          inference:  x + p_l * f(x)

:class:`StochasticDepth` wraps the *branch* ``f`` (the block adds the identity). ``mode="row"`` draws
``b`` per sample (as in timm's DropPath; the default, what the SPEC asks); ``mode="batch"`` draws one
``b`` per mini-batch as in the paper, and in eager mode skips computing ``f`` entirely when it is dropped
(the paper's speed-up; under ``torch.compile`` the branch is computed and multiplied by ``b``, which keeps
the graph whole). Wrapping keeps the branch's ``state_dict`` keys: a model with a wrapped branch saves and
loads the same keys as the model without it.

Survival probabilities fall linearly with depth (the paper's eq. 4): block ``l`` of ``L`` gets
``p_l = 1 - l / L * (1 - p_L)``, from nearly 1 at the input to ``p_L`` (0.5 in the paper) at the
output; :func:`linear_survival` computes them.

:func:`stochastic_depth` is torchvision's functional form (``torchvision.ops.stochastic_depth``): ``p`` is the
*drop* probability, the survivors are scaled by ``1 / (1 - p)`` in training ("inverted", like dropout) and
inference is the identity -- the same expectation as the paper's rule, moved from inference to training.
"""
from __future__ import annotations

import torch
from torch import nn

_BRANCH = "branch."


def linear_survival(num_blocks: int, last: float = 0.5) -> list[float]:
    """``p_l = 1 - l / L * (1 - p_L)`` for ``l = 1..L``: the paper's linear decay rule."""
    if num_blocks < 1:
        raise ValueError(f"linear_survival: need at least one block, got {num_blocks}")
    if not 0.0 < last <= 1.0:
        raise ValueError(f"linear_survival: the last survival probability must be in (0, 1], got {last}")
    return [1.0 - l / num_blocks * (1.0 - last) for l in range(1, num_blocks + 1)]


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision's ``stochastic_depth``: zero the whole input per sample (``mode="row"``: a mask of shape
    (N, 1, ..., 1)) or for the whole batch (``mode="batch"``) with *drop* probability ``p``, scale the kept
    ones by ``1 / (1 - p)``; identity when not ``training`` or ``p == 0``. Meant for the residual branch's
    output: ``x + stochastic_depth(f(x), p, "row", self.training)``.

    The mask is ``bernoulli_(1 - p)`` on a tensor of the input's dtype, as torchvision draws it (the same
    values under the same seed). Raises ``ValueError`` for ``p`` outside ``[0, 1]`` or another mode."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ("batch", "row"):
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


def _strip_branch(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: ``prefix + "branch." + key`` -> ``prefix + key``, keeping the order of the keys."""
    items = list(state_dict.items())
    state_dict.clear()
    inner = prefix + _BRANCH
    for k, v in items:
        state_dict[prefix + k[len(inner):] if k.startswith(inner) else k] = v


def _add_branch(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the branch's keys under ``prefix`` get the ``branch.`` level back (a
    state_dict saved with it, by an older traintricks, is left as it is)."""
    own = [k for k in state_dict if k.startswith(prefix)]
    inner = prefix + _BRANCH
    branch = module.branch
    branch_has_branch = "branch" in branch._modules or "branch" in branch._parameters or "branch" in branch._buffers
    if own and all(k.startswith(inner) for k in own) and not branch_has_branch:
        return                                         # already in the wrapped layout
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[inner + k[len(prefix):] if k.startswith(prefix) else k] = v


class StochasticDepth(nn.Module):
    """Wrap a residual branch ``f``: ``b * f(x)`` in training (``b ~ Bernoulli(survival_prob)``), ``p * f(x)`` at
    inference (the paper's form; :func:`stochastic_depth` is torchvision's drop-probability form).

    Args:
        branch: the residual branch (any module; its output is scaled).
        survival_prob: ``p_l`` in ``(0, 1]``.
        mode: ``"row"`` (one ``b`` per sample) or ``"batch"`` (one per call; eager mode then skips the branch).

    ``state_dict`` keys are the branch's own (``state_dict()`` drops the ``branch.`` level and
    ``load_state_dict`` puts it back; a checkpoint that has it still loads). ``named_parameters()`` still shows
    the module tree, ``branch.`` included. ``reset_parameters()`` resets every sub-module that has one. Input
    and output shapes are the branch's; raises ``ValueError`` for a bad ``survival_prob`` or ``mode``."""

    def __init__(self, branch: nn.Module, survival_prob: float = 0.8, mode: str = "row") -> None:
        super().__init__()
        if not 0.0 < survival_prob <= 1.0:
            raise ValueError(f"StochasticDepth: survival_prob must be in (0, 1], got {survival_prob}")
        if mode not in ("row", "batch"):
            raise ValueError(f"StochasticDepth: mode must be 'row' or 'batch', got {mode!r}")
        self.branch, self.survival_prob, self.mode = branch, float(survival_prob), mode
        self._out_shapes: dict[tuple, tuple] = {}
        self.register_state_dict_post_hook(_strip_branch)
        self.register_load_state_dict_pre_hook(_add_branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.survival_prob
        if not self.training:
            out = self.branch(x)
            return out if p == 1.0 else out * p
        if self.mode == "batch":
            if torch.compiler.is_compiling():          # no data-dependent branch inside a graph
                out = self.branch(x)
                return out * torch.empty((1,) * out.ndim, dtype=out.dtype, device=out.device).bernoulli_(p)
            if float(torch.rand(())) < p:                # a CPU draw: no device synchronization
                return self.branch(x)
            shape = self._out_shapes.get(tuple(x.shape))
            if shape is None:                  # learn the branch's output shape once per input shape
                with torch.no_grad():
                    shape = self._out_shapes.setdefault(tuple(x.shape), tuple(self.branch(x).shape))
            return x.new_zeros(shape)          # dropped: the branch is not computed at all
        out = self.branch(x)
        keep = (torch.rand((out.shape[0],) + (1,) * (out.ndim - 1), device=out.device) < p).to(out.dtype)
        return out * keep

    def reset_parameters(self) -> None:
        """Re-initialize the branch: every sub-module's own ``reset_parameters``."""
        for m in self.branch.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return f"survival_prob={self.survival_prob:.4g}, mode={self.mode}"
