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
    """fold_pair raises naming the reason; fold_batchnorm (API moved in issue 15) refuses a training-mode model and
    reports, with a warning, a pair it cannot fold instead of raising."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(model)
    with pytest.warns(UserWarning, match="folded nothing.*no running statistics"):
        folded, report = fold_batchnorm(model.eval(), return_report=True)
    assert report.folded == [] and report.not_folded[0][0] == "1" and "no running statistics" in report.not_folded[0][1]
    assert isinstance(folded[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="4 output channels vs 5"):
        fold_pair(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="only Conv and Linear"):
        fold_pair(nn.ReLU(), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="no running statistics"):
        fold_pair(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.warns(UserWarning, match="no batch norm"):
        fold_batchnorm(nn.Sequential(nn.Linear(2, 2)).eval())


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


# ---------------------------------------------------------------- issue 15, item 8
import torch.fx  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from traintricks.memory import InPlaceABN, InPlaceABN1d  # noqa: E402
from traintricks.nn import BatchNorm1d, BatchNorm2d, BatchNormAct2d, BatchRenorm2d  # noqa: E402


def _trained(model, *shape, steps=3):
    """Give every norm non-trivial running statistics (and its affine parameters non-trivial values), in float64."""
    g = torch.Generator().manual_seed(1)
    model = model.double().train()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean") and getattr(m, "weight", None) is not None and m.weight.ndim == 1:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        for _ in range(steps):
            model(torch.randn(8, *shape, generator=g, dtype=torch.float64) * 2 + 1)
    return model.eval()


def _same(folded, model, x):
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-10)


def test_inplace_abn_keeps_its_leaky_relu():
    """Issue 15 item 8: folding dropped the activation inside the norm module (gave -1.0; the model gives -0.01)."""
    model = nn.Sequential(nn.Linear(1, 1), InPlaceABN1d(1)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
    x = torch.tensor([[-1.0]])
    folded = fold_batchnorm(model)
    torch.testing.assert_close(model(x), torch.tensor([[-0.01]]), rtol=1e-4, atol=0)
    torch.testing.assert_close(folded(x), model(x))
    assert isinstance(folded[1], nn.LeakyReLU) and folded[1].negative_slope == 0.01


class TorchvisionBasicBlock(nn.Module):
    """A residual block in torchvision's style (not ours): F.relu, a functional residual add, a downsample
    Sequential(conv, bn)."""

    def __init__(self, cin, cout, stride=2, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 2, dilation=2, groups=2, bias=False)
        self.bn2 = norm(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        identity = self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, lambda c: BatchNorm2d(c, momentum=0.1),
                                  lambda c: BatchRenorm2d(c, momentum=0.1)], ids=["torch", "ours", "renorm"])
def test_residual_block_folds_every_pair_in_a_traced_graph(norm):
    torch.manual_seed(0)
    block = _trained(TorchvisionBasicBlock(4, 6, norm=norm), 4, 8, 8)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    folded, report = fold_batchnorm(block, return_report=True)
    assert sorted(report.folded) == [("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1")]
    assert report.not_folded == [] and folded.folded_batchnorms == 3
    assert isinstance(folded, torch.fx.GraphModule) and count_bn(folded) == 0
    _same(folded, block, x)
    keys = set(block.state_dict())
    bn_keys = {k for k in keys if k.startswith(("bn1.", "bn2.", "downsample.1."))}
    assert set(folded.state_dict()) == (keys - bn_keys) | {"conv1.bias", "conv2.bias", "downsample.0.bias"}
    assert sum(p.numel() for p in folded.parameters()) == \
        sum(p.numel() for n, p in block.named_parameters() if not n.startswith(("bn", "downsample.1"))) + 3 * 6
    assert folded.conv2.groups == 2 and folded.conv2.dilation == (2, 2)
    assert block.training is False and count_bn(block) == 3                         # the original is untouched


def test_sequential_cnn_keeps_its_class_and_folds_exactly():
    torch.manual_seed(0)
    model = _trained(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, groups=4, dilation=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(8 * 6 * 6, 5), nn.BatchNorm1d(5)), 3, 10, 10)
    folded, report = fold_batchnorm(model, return_report=True, example_inputs=torch.randn(2, 3, 10, 10).double())
    assert type(folded) is nn.Sequential and count_bn(folded) == 0 and len(report.folded) == 3
    assert report.notes == []                                           # shapes checked: no assumption left
    _same(folded, model, torch.randn(4, 3, 10, 10, dtype=torch.float64))
    assert [k for k in folded.state_dict()] == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]


def test_linear_bn1d_in_a_custom_module_and_a_3d_linear_is_not_folded_when_checked():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.out = nn.Linear(5, 4), BatchNorm1d(4, momentum=0.1), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.bn(self.fc(x))))
    torch.manual_seed(0)
    model = _trained(MLP(), 5)
    _same(fold_batchnorm(model), model, torch.randn(6, 5, dtype=torch.float64))
    seq = _trained(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 4, 4)        # (N, L=4, 4): BN over dim 1
    with pytest.warns(UserWarning, match="3-D"):
        folded, report = fold_batchnorm(seq, return_report=True, example_inputs=torch.randn(2, 4, 4).double())
    assert report.folded == [] and "3-D" in report.not_folded[0][1]
    _same(folded, seq, torch.randn(3, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("make, act", [
    (lambda c: BatchNormAct2d(c, activation="relu", momentum=0.1), nn.ReLU),
    (lambda c: BatchNormAct2d(c, activation="leaky_relu", negative_slope=0.2, momentum=0.1), nn.LeakyReLU),
    (lambda c: BatchNormAct2d(c, activation="gelu", momentum=0.1), nn.GELU),
    (lambda c: InPlaceABN(c, activation_param=0.3, momentum=0.1), nn.LeakyReLU),
], ids=["bnact_relu", "bnact_leaky", "bnact_gelu", "inplace_abn"])
def test_norm_activation_modules_keep_their_activation_in_sequentials_and_graphs(make, act):
    torch.manual_seed(0)
    seq = _trained(nn.Sequential(nn.Conv2d(2, 4, 3), make(4), nn.Conv2d(4, 4, 1)), 2, 6, 6)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64) * 3
    folded = fold_batchnorm(seq)
    assert folded.folded_batchnorms == 1 and isinstance(folded[1], act)
    _same(folded, seq, x)
    block = _trained(TorchvisionBasicBlock(2, 4, norm=make), 2, 6, 6)
    folded = fold_batchnorm(block)
    assert folded.folded_batchnorms == 3 and isinstance(folded.bn1, act)
    _same(folded, block, x)


def test_a_conv_output_with_two_consumers_is_not_folded():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            z = self.conv(x)
            return self.bn(z) + z.mean() + self.bn2(self.conv2(z))
    torch.manual_seed(0)
    model = _trained(Two(), 2, 6, 6)
    folded, report = fold_batchnorm(model, return_report=True)
    assert report.folded == [("conv2", "bn2")]
    assert report.not_folded[0][0] == "bn" and "also used by" in report.not_folded[0][1]
    _same(folded, model, torch.randn(3, 2, 6, 6, dtype=torch.float64))
    assert isinstance(folded.bn, nn.BatchNorm2d)


def test_shared_layers_unknown_norms_and_training_norms_are_left_and_reported():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.bn2 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.bn2(self.conv(x))

    class Scaled(nn.BatchNorm2d):                     # an unknown subclass: more than batch norm
        def forward(self, x):
            return 2 * super().forward(x)
    torch.manual_seed(0)
    shared = _trained(Shared(), 2, 4, 4)
    with pytest.warns(UserWarning, match="more than once"):
        fold_batchnorm(shared)
    seq = _trained(nn.Sequential(nn.Conv2d(2, 2, 1), Scaled(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)), 2, 4, 4)
    seq[3].train()
    with pytest.warns(UserWarning, match="folded nothing"):
        folded, report = fold_batchnorm(seq, return_report=True)
    reasons = dict(report.not_folded)
    assert report.folded == [] and "own forward" in reasons["1"] and "training mode" in reasons["3"]
    seq[3].eval()
    _same(folded.eval(), seq, torch.randn(2, 2, 4, 4, dtype=torch.float64))


def test_untraceable_model_folds_inside_only_when_example_inputs_show_the_uses():
    # (moved with issue 15's folding fix: without a trace, the uses of body.0/body.1 are unknown, so they are
    # folded only when a run on example_inputs shows that they are used only through their Sequential)
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:                            # data-dependent: torch.fx cannot trace it
                return self.bn(self.body(x))
            return self.body(x)
    torch.manual_seed(0)
    model = _trained(Untraceable(), 2, 6, 6)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    with pytest.warns(UserWarning, match="folded nothing"):
        folded, report = fold_batchnorm(model, return_report=True)
    assert report.folded == [] and "cannot be traced" in dict(report.not_folded)["body.1"]
    assert any("could not trace" in n and "example_inputs" in n for n in report.notes)
    folded, report = fold_batchnorm(model, return_report=True, example_inputs=x.abs())
    assert type(folded) is Untraceable and report.folded == [("body.0", "body.1")]
    assert any("could not trace" in n for n in report.notes) and report.not_folded[0][0] == "bn"
    _same(folded, model, x.abs())
    _same(folded, model, -x.abs())


def test_linear_folded_without_example_inputs_refuses_a_3d_input_instead_of_a_wrong_number():
    # Linear -> BatchNorm1d folds on the assumption of (N, C) inputs; on (N, L, C) with L == C the norm
    # normalized dim 1 (L), so the folded layer would compute something else: it must raise instead.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).double()
    model.train()
    model(torch.randn(16, 3, dtype=torch.float64))          # some running statistics
    model.eval()
    folded = fold_batchnorm(model)
    x2 = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(folded(x2), model(x2), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="example_inputs"):
        folded(torch.randn(5, 3, 3, dtype=torch.float64))
    # with example inputs of the 3-D kind the pair is not folded at all, and the model stays exact
    x3 = torch.randn(5, 3, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="folded nothing"):
        checked = fold_batchnorm(model, example_inputs=x3)
    torch.testing.assert_close(checked(x3), model(x3), atol=1e-10, rtol=0)


def test_regression_issue15_fold_sequential_pair_used_elsewhere_by_the_parent():
    """Remaining fault 5: a Sequential (conv, bn) was folded in place although the parent also calls the conv
    (folded 1, max error 0.975). Nothing may fold where the model would change; the result equals the model."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

        def forward(self, x):
            return self.body(x) + self.body[0](x)

    class ReadsNorm(nn.Module):                       # the norm's statistics read directly
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

        def forward(self, x):
            return self.body(x) * self.body[1].running_var.view(1, -1, 1, 1)

    class UsesNormAlone(nn.Module):                   # the norm called on another input, in a child's graph
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

        def forward(self, x):
            return self.block(x) + self.block[1](x)

    for cls in (M, ReadsNorm, UsesNormAlone):
        torch.manual_seed(0)
        model = _trained(cls(), 3, 4, 4)
        model.eval()
        x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
        with pytest.warns(UserWarning, match="folded nothing"):
            folded, report = fold_batchnorm(model, return_report=True)
        assert folded.folded_batchnorms == 0 and report.not_folded[0][0].endswith(".1"), (cls, report)
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-6)
        with pytest.warns(UserWarning, match="folded nothing"):          # the same with a checking run
            checked = fold_batchnorm(model, example_inputs=x)
        torch.testing.assert_close(checked(x), model(x), rtol=0, atol=1e-6)


def test_untraceable_parent_that_calls_a_member_directly_folds_nothing_even_with_example_inputs():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
            self.other = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))

        def forward(self, x):
            if x.sum() > 0:                            # data-dependent: untraceable
                return self.body(x) + self.body[0](x) + self.other(x)
            return self.body(x) + self.other(x)
    torch.manual_seed(0)
    model = _trained(Direct(), 2, 3, 3).eval()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64).abs()
    folded, report = fold_batchnorm(model, return_report=True, example_inputs=x)
    assert report.folded == [("other.0", "other.1")]
    assert "not (only) as a member of a Sequential" in dict(report.not_folded)["body.1"]
    _same(folded, model, x)


def test_stochastic_depth_branch_folds_in_place_and_keeps_its_scaling():
    from traintricks.nn import StochasticDepthBranch, add_stochastic_depth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch = add_stochastic_depth(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)), 0.7)

        def forward(self, x):
            return x + self.branch(x)
    torch.manual_seed(0)
    model = _trained(Block(), 2, 4, 4).eval()
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms == 1 and isinstance(folded.branch, StochasticDepthBranch)
    _same(folded, model, torch.randn(3, 2, 4, 4, dtype=torch.float64))
