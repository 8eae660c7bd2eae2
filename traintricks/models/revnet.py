"""A reversible residual network (RevNet; Gomez et al. 2017, arXiv:1707.04585): stages of
:class:`~traintricks.memory.ReversibleBlock` s whose activations are reconstructed in backward instead of
stored, so the memory saved for backward does not grow with the number of blocks per stage.

Stem conv3x3 -> for each stage: (a strided conv3x3 + norm-act that changes width and resolution, except for
the first stage) then ``blocks`` reversible blocks, each with ``F`` and ``G`` = conv3x3-norm-act-conv3x3 on
half the channels -> norm-act -> global average pool -> linear.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..memory.reversible import ReversibleBlock, ReversibleSequence
from .common import NormAct, check_positive, conv, spatial_dims


def _branch(c: int, norm: str, activation: str, dim: int, groups: int) -> nn.Module:
    return nn.Sequential(conv(dim, c, c, 3), NormAct(c, norm, activation, dim, groups), conv(dim, c, c, 3))


class RevNet(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, blocks: Sequence[int] = (2, 2, 2),
                 widths: Sequence[int] = (16, 32, 64), norm: str = "batchnorm", activation: str = "relu",
                 norm_groups: int = 8, reversible: bool = True) -> None:
        super().__init__()
        dim = spatial_dims(in_shape, "revnet")
        blocks, widths = check_positive("blocks", blocks), check_positive("widths", widths)
        if len(blocks) != len(widths):
            raise ValueError(f"blocks ({len(blocks)} stages) and widths ({len(widths)} stages) differ in length")
        if any(w % 2 for w in widths):
            raise ValueError(f"widths must be even (the channels split in two halves), got {widths}")
        layers: list[nn.Module] = [conv(dim, in_shape[0], widths[0], 3), NormAct(widths[0], norm, activation, dim,
                                                                                  norm_groups)]
        cin = widths[0]
        for s, (n, w) in enumerate(zip(blocks, widths)):
            if s > 0:
                layers += [conv(dim, cin, w, 3, stride=2), NormAct(w, norm, activation, dim, norm_groups)]
            stage = [ReversibleBlock(_branch(w // 2, norm, activation, dim, norm_groups),
                                     _branch(w // 2, norm, activation, dim, norm_groups)) for _ in range(n)]
            layers.append(ReversibleSequence(stage) if reversible else nn.Sequential(*stage))
            cin = w
        layers.append(NormAct(cin, norm, activation, dim, norm_groups))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
