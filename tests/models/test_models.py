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


@pytest.mark.parametrize("in_shape", [(1, 12, 12), (3, 16)])
@pytest.mark.parametrize("norm", NORMS.names())
def test_cnn_with_pool_before_norm_trains_with_every_norm(in_shape, norm):
    torch.manual_seed(0)
    act = "leaky_relu" if norm == "inplace_abn" else "relu"
    model = MODELS.get("cnn")(in_shape, 5, norm=norm, activation=act, pool_before_norm=True, **SMALL["cnn"]).double()
    x = torch.randn(4, *in_shape, dtype=torch.float64, requires_grad=True)
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in model.parameters())


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


def test_pool_before_norm_is_the_same_function_in_eval_with_positive_gammas():
    """Max pooling commutes with ReLU and with an increasing affine map (eval-mode BN with gamma > 0): moving each
    stage's pool before its norm keeps the parameters and, in eval, the function; a negative gamma breaks it."""
    torch.manual_seed(0)
    kw = {"widths": [4, 8, 8], "blocks": [1, 2, 1]}
    after = MODELS.get("cnn")((1, 12, 12), 5, **kw)
    before = MODELS.get("cnn")((1, 12, 12), 5, pool_before_norm=True, **kw)
    with torch.no_grad():
        for m in after.modules():
            if isinstance(m, BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    src, dst = list(after.state_dict().values()), list(before.state_dict().values())
    assert [t.shape for t in src] == [t.shape for t in dst]          # the same parameters, in the same order
    with torch.no_grad():
        for s, d in zip(src, dst):
            d.copy_(s)
    # the pool sits right after each pooled stage's last conv
    kinds = [type(m).__name__ for m in before.features]
    assert kinds[:3] == ["Conv2d", "MaxPool2d", "NormAct"] and kinds.count("MaxPool2d") == 2
    x = torch.randn(6, 1, 12, 12)
    after.eval(), before.eval()
    torch.testing.assert_close(before(x), after(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        next(m for m in before.modules() if isinstance(m, BatchNorm2d)).weight[0] = -1.0
    assert not torch.allclose(before(x), after(x), atol=1e-3)


def test_pool_before_norm_takes_batch_statistics_over_the_pooled_maps():
    torch.manual_seed(0)
    model = MODELS.get("cnn")((1, 12, 12), 5, pool_before_norm=True, widths=[4, 8], blocks=[1, 1]).train()
    conv, pool, normact = model.features[0], model.features[1], model.features[2]
    bn = normact[0]
    x = torch.randn(8, 1, 12, 12)
    with torch.no_grad():
        pooled = pool(conv(x))
        model(x)
    assert pooled.shape == (8, 4, 6, 6)
    # models' norms use cumulative_warmup: the first batch's statistics replace the initial estimates entirely
    assert bn.cumulative_warmup
    torch.testing.assert_close(bn.running_mean, pooled.mean((0, 2, 3)))
