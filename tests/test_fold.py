import pytest
import torch
from torch import nn

from traintricks.models import MODELS
from traintricks.nn import fold_batchnorm, fold_pair
from traintricks.nn.batchnorm import _BatchNorm

BN = (nn.modules.batchnorm._BatchNorm, _BatchNorm)


def randomize_bn(model, seed=0):
    """Give every BN non-trivial running statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, BN):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model


def count_bn(model):
    return sum(isinstance(m, BN) for m in model.modules())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_conv_bn_pair_folds_exactly(bias, affine):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=bias, groups=1), nn.BatchNorm2d(8, affine=affine)
    pair = randomize_bn(nn.Sequential(conv, bn)).eval()
    x = torch.randn(4, 3, 9, 9)
    fused = fold_pair(conv, bn)
    torch.testing.assert_close(fused(x), pair(x), rtol=1e-5, atol=1e-5)


def test_linear_bn1d_folds_exactly_in_float64():
    torch.manual_seed(0)
    pair = randomize_bn(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7))).double().eval()
    x = torch.randn(10, 5, dtype=torch.float64)
    folded = fold_batchnorm(pair)
    assert folded.folded_batchnorms == 1 and count_bn(folded) == 0
    torch.testing.assert_close(folded(x), pair(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, opts, shape", [
    ("cnn", {"widths": [8, 16], "blocks": [1, 2]}, (1, 12, 12)),
    ("cnn", {"widths": [8, 16], "blocks": [1, 1]}, (2, 20)),
    ("mlp", {"hidden": [16, 8]}, (1, 6, 6)),
    ("preact_resnet", {"widths": [4, 8], "blocks": [1, 1], "stem_width": 8}, (1, 12, 12)),
])
def test_whole_models_fold_to_equal_outputs(name, opts, shape):
    torch.manual_seed(0)
    model = randomize_bn(MODELS.get(name)(shape, 5, **opts)).eval()
    x = torch.randn(6, *shape)
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms > 0 and count_bn(folded) == count_bn(model) - folded.folded_batchnorms
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert model.training is False and count_bn(model) > count_bn(folded)   # the original is untouched


def test_channels_last_folded_model():
    torch.manual_seed(0)
    model = randomize_bn(MODELS.get("cnn")((1, 16, 16), 4, widths=[8, 16], blocks=[1, 1]))
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-4, atol=1e-4)


def test_refuses_what_cannot_be_folded():
    with pytest.raises(ValueError, match="no running statistics"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)))
    with pytest.raises(ValueError, match="4 output channels vs 5"):
        fold_pair(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="only Conv and Linear"):
        fold_pair(nn.ReLU(), nn.BatchNorm2d(5))


def test_named_nested_sequentials_fold_in_place():
    from collections import OrderedDict
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), post=nn.Sequential(OrderedDict(
        bn=nn.BatchNorm2d(4), act=nn.ReLU()))))
    model = randomize_bn(model).eval()
    folded = fold_batchnorm(model)
    assert list(folded.post._modules) == ["bn", "act"] and isinstance(folded.post.bn, nn.Identity)
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
