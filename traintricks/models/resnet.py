"""Pre-activation ResNet (ResNet v2; He, Zhang, Ren & Sun 2016, "Identity Mappings in Deep Residual
Networks", arXiv:1603.05027), with bottleneck or basic blocks.

A pre-activation bottleneck block computes, for input ``x``,

    h = act(norm1(x))
    y = conv1x1(act(norm3(conv3x3_s(act(norm2(conv1x1(h)))))))  # width -> width -> 4*width
    out = y + (x if shapes agree else proj_s(h))

so the identity path carries ``x`` untouched from block to block; normalization and activation
come *before* each convolution. A final norm-activation precedes global average pooling.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .common import NormAct, check_positive, conv, spatial_dims


class PreActBlock(nn.Module):
    """Basic pre-activation block: two 3x3 convolutions."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, norm: str, activation: str, dim: int, groups: int):
        super().__init__()
        cout = width * self.expansion
        self.pre = NormAct(cin, norm, activation, dim, groups)
        self.branch = nn.Sequential(conv(dim, cin, width, 3, stride), NormAct(width, norm, activation, dim, groups),
                                    conv(dim, width, cout, 3))
        self.shortcut = conv(dim, cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return self.branch(h) + (x if self.shortcut is None else self.shortcut(h))


class PreActBottleneck(PreActBlock):
    """Bottleneck pre-activation block: 1x1 reduce, 3x3 (strided), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm: str, activation: str, dim: int, groups: int):
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.pre = NormAct(cin, norm, activation, dim, groups)
        self.branch = nn.Sequential(
            conv(dim, cin, width, 1), NormAct(width, norm, activation, dim, groups),
            conv(dim, width, width, 3, stride), NormAct(width, norm, activation, dim, groups),
            conv(dim, width, cout, 1))
        self.shortcut = conv(dim, cin, cout, 1, stride) if stride != 1 or cin != cout else None


class PreActResNet(nn.Module):
    def __init__(self, in_shape: Sequence[int], num_classes: int, blocks: Sequence[int] = (1, 1, 1),
                 widths: Sequence[int] = (16, 32, 64), stem_width: int = 32, bottleneck: bool = True,
                 norm: str = "batchnorm", activation: str = "relu", norm_groups: int = 8,
                 aux_heads: Sequence[int] = (), aux_weight: float = 0.3) -> None:
        super().__init__()
        dim = spatial_dims(in_shape, "preact_resnet")
        blocks, widths = check_positive("blocks", blocks), check_positive("widths", widths)
        if len(blocks) != len(widths):
            raise ValueError(f"blocks ({len(blocks)} stages) and widths ({len(widths)} stages) differ in length")
        if stem_width < 1:
            raise ValueError(f"stem_width must be >= 1, got {stem_width}")
        block = PreActBottleneck if bottleneck else PreActBlock
        layers: list[nn.Module] = [conv(dim, in_shape[0], stem_width, 3)]
        cin = stem_width
        stage_ends, stage_channels = [], []
        for s, (n, w) in enumerate(zip(blocks, widths)):
            for i in range(n):
                layers.append(block(cin, w, 2 if s > 0 and i == 0 else 1, norm, activation, dim, norm_groups))
                cin = w * block.expansion
            stage_ends.append(len(layers) - 1)
            stage_channels.append(cin)
        layers.append(NormAct(cin, norm, activation, dim, norm_groups))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(cin, num_classes)
        # auxiliary heads (deep supervision): a pooled linear classifier after each chosen stage, used in
        # training only; their logits go to ``self.aux_logits`` for the AuxiliaryHeads loss
        for a in aux_heads:
            if not 0 <= a < len(blocks) - 1:
                raise ValueError(f"aux_heads: stage indices must be in [0, {len(blocks) - 1}) (the last stage has the "
                                 f"main head), got {a}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        self.aux_at = {stage_ends[a]: i for i, a in enumerate(sorted(set(aux_heads)))}
        self.aux_heads = nn.ModuleList(
            nn.Sequential(NormAct(stage_channels[a], norm, activation, dim, norm_groups),
                          nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(stage_channels[a], num_classes))
            for a in sorted(set(aux_heads)))
        self.aux_weight = float(aux_weight)
        self.aux_logits: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.aux_at):
            self.aux_logits = []
            return self.head(self.pool(self.features(x)).flatten(1))
        aux = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.aux_at:
                aux.append(self.aux_heads[self.aux_at[i]](x))
        self.aux_logits = aux
        return self.head(self.pool(x).flatten(1))
