"""A small, fast convolutional network: the default recipe's model.

Stage ``i`` has ``blocks[i]`` conv3x3-norm-activation layers of ``widths[i]`` channels; stages are
separated by 2x2 max pooling; a global max pool and a linear layer classify. The first stage is
kept to one layer because it runs at full resolution, where a layer costs four times as much.
Convolutions have no bias (the normalization's beta plays its part) unless ``norm="none"``.

``pool_before_norm=True`` moves each 2x2 max pool from after a stage's last norm-activation to right after its
convolution (conv -> pool -> norm -> act). Max pooling commutes with a ReLU and with any increasing affine map, so
this is the same family of functions; the only change is that batch norm's statistics are taken over the pooled
maps. The norm and the activation then run on a quarter of the values: the full-resolution stage's norm,
activation and their backward are a large part of a step on CPU, where they are memory-bound
(``docs/benchmarks.md``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .common import NormAct, check_positive, conv, max_pool, spatial_dims


class SmallCNN(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64),
                 blocks: Sequence[int] = (1, 2, 2), norm: str = "batchnorm", activation: str = "relu",
                 norm_groups: int = 8, pool_before_norm: bool = False) -> None:
        super().__init__()
        dim = spatial_dims(in_shape, "cnn")
        widths, blocks = check_positive("widths", widths), check_positive("blocks", blocks)
        if len(widths) != len(blocks):
            raise ValueError(f"widths ({len(widths)} stages) and blocks ({len(blocks)} stages) differ in length")
        layers: list[nn.Module] = []
        cin = in_shape[0]
        for s, (w, b) in enumerate(zip(widths, blocks)):
            pooled = s + 1 < len(widths)  # a 2x2 max pool follows every stage but the last
            for i in range(b):
                layers.append(conv(dim, cin, w, 3, bias=norm == "none"))
                if pooled and pool_before_norm and i == b - 1:
                    layers.append(max_pool(dim))
                layers.append(NormAct(w, norm, activation, dim, norm_groups))
                cin = w
            if pooled and not pool_before_norm:
                layers.append(max_pool(dim))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1) if dim == 2 else nn.AdaptiveMaxPool1d(1)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
