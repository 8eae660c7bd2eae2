"""A user's own network for examples/ablation_folder.sh: a torchvision-style ResNet (BasicBlock, functional
ReLU, ``out += identity``, a 1x1 downsample), written without anything from traintricks. Its factory takes the
data's shape and class count (``in_shape``, ``num_classes``, filled in by traintricks) and keyword options
(``model.width``, ``model.blocks``)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity                              # the residual addition stochastic depth drops
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, blocks=(1, 1, 1)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if i and not j else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet(in_shape, num_classes, width: int = 16, blocks: list = [1, 1, 1]):  # noqa: B006 - a config option
    """A small torchvision-style ResNet for images of shape ``in_shape = (C, H, W)``."""
    return ResNet(in_shape[0], num_classes, width, tuple(blocks))
