"""Multi-layer perceptron: flatten, then Linear-norm-activation layers, then a linear classifier."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..nn import Dropout
from .common import NormAct, check_positive


class MLP(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256),
                 norm: str = "batchnorm", activation: str = "relu", norm_groups: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__()
        hidden = check_positive("hidden", hidden)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        cin = math.prod(in_shape)
        for h in hidden:
            layers += [nn.Linear(cin, h, bias=norm == "none"), NormAct(h, norm, activation, 0, norm_groups)]
            if dropout:
                layers.append(Dropout(dropout))
            cin = h
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))
