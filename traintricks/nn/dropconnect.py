"""DropConnect (Wan, Zeiler, Zhang, LeCun & Fergus, ICML 2013): drop *weights*, not activations.

Training: one mask ``M ~ Bernoulli(1 - p)`` over the weight tensor per forward pass (so per batch,
shared by its samples, as in the paper's efficient implementation), and

    y = (W * M / (1 - p)) x + b

(the bias is not dropped). The ``1 / (1 - p)`` scaling makes ``E[y] = W x + b`` for every input.

**Inference rule used: the mean (expectation) rule** -- ``y = W x + b``, exactly the training
pre-activation's expectation. The paper instead moment-matches each pre-activation to a Gaussian
``N(E[u], Var[u])`` and averages the activation over samples from it; that matters only through the
nonlinearity that follows, and the mean rule is what common implementations use. Tested: the mean
over many training-mode masks converges to the eval-mode output.

Backward: the gradient reaches ``W`` through the mask, ``dL/dW = M / (1 - p) * dL/dW_masked``, and the
input through the masked weights; autograd derives both from the masked-weight expression.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import _traced, check_probability


def _masked(weight: torch.Tensor, p: float) -> torch.Tensor:
    mask = torch.rand(weight.shape, device=weight.device) >= p     # float32 draw whatever the weight's dtype
    return weight * mask * (1.0 / (1.0 - p))


class DropConnectLinear(nn.Linear):
    """:class:`torch.nn.Linear` whose weights are dropped with probability ``p`` (keyword-only, in ``[0, 1)``) in
    training (one mask per batch). Linear's arguments ``(in_features, out_features, bias, device, dtype)``, its
    parameters, ``state_dict`` keys and ``reset_parameters``; input (..., in_features), output (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 p: float = 0.5) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.p = check_probability("DropConnectLinear", p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        node = _traced(self, input)              # torch.fx: one node, so a traced model follows train()/eval()
        if node is not None:
            return node
        w = _masked(self.weight, self.p) if self.training and self.p > 0 else self.weight
        return F.linear(input, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"

    @classmethod
    def from_linear(cls, layer: nn.Linear, p: float) -> "DropConnectLinear":
        """A DropConnect layer with ``layer``'s weights."""
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, p=p,
                  device=layer.weight.device, dtype=layer.weight.dtype)
        new.load_state_dict(layer.state_dict())
        return new


class DropConnectConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` whose kernel weights are dropped with probability ``p`` (keyword-only, in ``[0, 1)``)
    in training (one mask per batch). Conv2d's arguments ``(in_channels, out_channels, kernel_size, stride=1,
    padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros", device=None, dtype=None)``, parameters, keys
    and ``reset_parameters``; inputs (N, C, H, W) or (C, H, W) as Conv2d. One ``call_module`` node under
    ``torch.fx``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 p: float = 0.5) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.p = check_probability("DropConnectConv2d", p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        node = _traced(self, input)
        if node is not None:
            return node
        w = _masked(self.weight, self.p) if self.training and self.p > 0 else self.weight
        return self._conv_forward(input, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"
