"""traintricks.surgery.fold_batchnorm: in place, on user-style models."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traintricks.nn as ttnn
from tests.surgery.user_models import BasicBlock, Bottleneck, LeakyNet, TinyViT, resnet50, resnet_tiny
from traintricks.surgery import NothingToChangeError, fold_batchnorm


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_fold_resnet_tiny_in_place_exact_in_eval_keeping_classes():
    model = _randomize(resnet_tiny()).eval()
    block = model.layer1[0]
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    report = fold_batchnorm(model)
    assert len(report) == 20 and not report.skipped
    assert model.layer1[0] is block and type(block) is BasicBlock     # nothing became a GraphModule
    assert isinstance(block.bn1, nn.Identity) and block.conv1.bias is not None
    assert isinstance(model.layer2[0].downsample[1], nn.Identity)
    assert dict(report.changed)["layer1.0.bn1"].startswith("folded into layer1.0.conv1")
    assert _rel_err(model(x), ref) < 1e-5
    keys = set(model.state_dict())
    assert "layer1.0.conv1.bias" in keys and not any("bn" in k for k in keys)
    assert _rel_err(copy.deepcopy(model).eval()(x), ref) < 1e-5


def test_fold_resnet50_shape_exact_in_eval():
    torch.manual_seed(0)
    model = _randomize(resnet50(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    report = fold_batchnorm(model)
    assert len(report) == 53 and type(model.layer3[2]) is Bottleneck
    assert _rel_err(model(x), ref) < 1e-5


def test_fold_sequential_pairs_of_the_leaky_net():
    model = _randomize(LeakyNet()).eval()
    x = torch.randn(2, 1, 8, 8)
    ref = model(x)
    assert len(fold_batchnorm(model)) == 3
    assert _rel_err(model(x), ref) < 1e-5


def test_fused_norm_leaves_its_activation():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), ttnn.BatchNormAct2d(4, activation="leaky_relu", negative_slope=0.2))
    _randomize(model).eval()
    x = torch.randn(2, 2, 6, 6)
    ref = model(x)
    fold_batchnorm(model)
    assert isinstance(model[1], nn.LeakyReLU) and model[1].negative_slope == 0.2
    assert _rel_err(model(x), ref) < 1e-5


class TapNet(nn.Module):
    """The conv output is also used by a skip path: folding its norm would change what the skip sees."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        z = self.conv(x)
        y = F.relu(self.bn(z)) + z
        return self.bn2(self.conv2(y))


def test_pair_whose_layer_output_is_used_elsewhere_is_skipped_with_the_reason():
    model = _randomize(TapNet()).eval()
    x = torch.randn(2, 3, 5, 5)
    ref = model(x)
    report = fold_batchnorm(model)
    assert [p for p, _ in report.changed] == ["bn2"]
    assert "folding would change what" in dict(report.skipped)["bn"]
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert _rel_err(model(x), ref) < 1e-5


def test_linear_on_tokens_is_not_folded_when_example_inputs_show_it():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    report = fold_batchnorm(copy.deepcopy(model))
    assert any("assumed a batched input" in n for n in report.notes)
    with pytest.raises(NothingToChangeError, match="3-D"):
        fold_batchnorm(model, example_inputs=torch.randn(2, 4, 4))


def test_refusals():
    with pytest.raises(NothingToChangeError, match="found no conv/linear -> batch norm pairs"):
        fold_batchnorm(TinyViT().eval())
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(resnet_tiny())
    with pytest.raises(TypeError, match="nn.Module"):
        fold_batchnorm([nn.Conv2d(1, 1, 1)])


def test_copying_fold_batchnorm_of_traintricks_nn_still_returns_a_folded_copy():
    model = _randomize(resnet_tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    folded = ttnn.fold_batchnorm(model)
    assert isinstance(model.bn1, nn.BatchNorm2d) and folded.folded_batchnorms == 20
    assert _rel_err(folded(x), model(x)) < 1e-5


def test_timm_resnet_folds():
    timm = pytest.importorskip("timm")
    model = _randomize(timm.create_model("resnet18", pretrained=False, num_classes=3)).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = model(x)
    report = fold_batchnorm(model)
    assert len(report) > 0
    assert _rel_err(model(x), ref) < 1e-5
