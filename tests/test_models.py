import pytest
import torch

from traintricks.models import MODELS, PreActBottleneck, PreActResNet
from traintricks.nn import NORMS, BatchNorm2d

SMALL = {"cnn": {"widths": [4, 8], "blocks": [1, 1]},
         "preact_resnet": {"widths": [2, 4], "blocks": [1, 1], "stem_width": 4},
         "mlp": {"hidden": [16]},
         "revnet": {"widths": [4, 8], "blocks": [1, 1]}}


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("in_shape", [(1, 12, 12), (3, 16), (2, 8, 8)])
@pytest.mark.parametrize("norm", NORMS.names())
def test_every_model_with_every_norm_on_1d_and_2d_inputs(name, in_shape, norm):
    torch.manual_seed(0)
    if name == "mlp" and norm == "instancenorm":
        with pytest.raises(ValueError, match="instancenorm needs inputs with spatial positions"):
            MODELS.get(name)(in_shape, 5, norm=norm, **SMALL[name])
        return
    act = "leaky_relu" if norm == "inplace_abn" else "relu"     # in-place ABN inverts a leaky ReLU
    model = MODELS.get(name)(in_shape, 5, norm=norm, activation=act, **SMALL[name])
    x = torch.randn(4, *in_shape, dtype=torch.float64, requires_grad=True)
    out = model.double()(x)
    assert out.shape == (4, 5)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_bottleneck_is_pre_activation_with_identity_path():
    torch.manual_seed(0)
    block = PreActBottleneck(16, 4, 1, "batchnorm", "relu", 2, 8).eval()
    x = torch.randn(2, 16, 5, 5)
    torch.nn.init.zeros_(block.branch[-1].weight)       # last conv of the residual branch
    assert block.shortcut is None
    assert torch.equal(block(x), x)                       # the identity path carries x untouched
    # norm and activation come before the first convolution
    assert isinstance(block.pre[0], BatchNorm2d) and isinstance(block.branch[0], torch.nn.Conv2d)


def test_resnet_stages_downsample_and_expand():
    m = PreActResNet((1, 28, 28), 10, blocks=[2, 1, 1], widths=[4, 8, 16], stem_width=8)
    blocks = [b for b in m.features if isinstance(b, PreActBottleneck)]
    assert len(blocks) == 4 and blocks[0].shortcut is not None and blocks[1].shortcut is None
    feats = m.features(torch.randn(1, 1, 28, 28))
    assert feats.shape == (1, 64, 7, 7)                   # 16 * expansion 4, two stride-2 stages
    basic = PreActResNet((1, 28, 28), 10, blocks=[1, 1], widths=[4, 8], bottleneck=False)
    assert basic(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("kwargs", [{"widths": [0, 4]}, {"widths": [4], "blocks": [1, 1]}, {"blocks": []}])
def test_bad_architecture_is_rejected(kwargs):
    with pytest.raises(ValueError):
        MODELS.get("cnn")((1, 28, 28), 10, **kwargs)


def test_conv_model_rejects_flat_input():
    with pytest.raises(ValueError, match="needs inputs shaped"):
        MODELS.get("cnn")((784,), 10)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fused_norm_is_one_module_and_equals_the_unfused_model(activation):
    torch.manual_seed(0)
    fused = MODELS.get("cnn")((1, 12, 12), 5, norm="batchnorm_act", activation=activation, **SMALL["cnn"])
    torch.manual_seed(0)
    plain = MODELS.get("cnn")((1, 12, 12), 5, norm="batchnorm", activation=activation, **SMALL["cnn"])
    assert sum(isinstance(m, torch.nn.ReLU) or isinstance(m, torch.nn.GELU) for m in fused.modules()) == 0
    x = torch.randn(6, 1, 12, 12)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_inplace_abn_needs_leaky_relu_and_revnet_matches_its_plain_twin():
    with pytest.raises(ValueError, match="leaky_relu"):
        MODELS.get("preact_resnet")((1, 8, 8), 3, norm="inplace_abn")
    torch.manual_seed(0)
    rev = MODELS.get("revnet")((1, 12, 12), 5, widths=[4, 8], blocks=[2, 1]).double()
    torch.manual_seed(0)
    plain = MODELS.get("revnet")((1, 12, 12), 5, widths=[4, 8], blocks=[2, 1], reversible=False).double()
    plain.load_state_dict({k.replace("blocks.", ""): v for k, v in rev.state_dict().items()})
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    a, b = rev(x), plain(x)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    for (n1, p1), (n2, p2) in zip(rev.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-9, atol=1e-11)
