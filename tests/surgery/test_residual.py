"""Residual additions found by tracing any model, and the surgeries on their branches: stochastic depth, ShakeDrop,
zero init (issue 17). User-style models from tests/surgery/user_models.py, plus small ones written here."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.surgery.user_models import TinyViT, LeakyNet, resnet50, resnet_tiny
from traintricks.nn import StochasticDepthBranch, ShakeDrop
from traintricks.nn.shake import ShakeDropScale
from traintricks.surgery import (NothingToChangeError, ResidualAdd, add_shakedrop, add_stochastic_depth,
                                 find_residual_additions, zero_init_residual)


class Res(nn.Module):
    """``x + f(x)`` with a linear branch: the drop statistics are read off ``y - x``."""

    def __init__(self, d=6):
        super().__init__()
        self.f = nn.Linear(d, d)

    def forward(self, x):
        return x + self.f(x)


class GeluEnd(nn.Module):
    """A branch that ends in a functional op after its last module: no module to hook."""

    def __init__(self, d=6):
        super().__init__()
        self.f = nn.Linear(d, d)

    def forward(self, x):
        return x + F.gelu(self.f(x))


class Twice(nn.Module):
    """The same module ends two branches: a hook would act on both calls."""

    def __init__(self, d=6):
        super().__init__()
        self.f = nn.Linear(d, d)

    def forward(self, x):
        x = x + self.f(x)
        return x + self.f(x)


class Parallel(nn.Module):
    """Two parallel branches of one layer each, and an add of unrelated tensors: neither is residual."""

    def __init__(self, d=6):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return self.a(x) + self.b(x) + self.bias


class Untraceable(nn.Module):
    """A forward with data-dependent control flow (fx cannot trace it) around traceable residual blocks."""

    def __init__(self):
        super().__init__()
        self.net = resnet_tiny(num_classes=4)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 1.0
        return self.net(x)


def _img(n=4, c=3, s=16):
    return torch.randn(n, c, s, s)


# ------------------------------------------------------------------------------------------------------- finding
def test_resnet_tiny_has_8_residual_additions_with_downsample_as_skip():
    adds = find_residual_additions(resnet_tiny())
    assert len(adds) == 8 and all(isinstance(a, ResidualAdd) for a in adds)
    assert [a.location for a in adds] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [a.branch for a in adds] == [f"layer{i}.{j}.bn2" for i in range(1, 5) for j in range(2)]
    skips = {a.location: a.skip for a in adds}
    assert skips == {**{f"layer{i}.1": "identity" for i in range(1, 5)}, "layer1.0": "identity",
                     **{f"layer{i}.0": f"layer{i}.0.downsample.1" for i in range(2, 5)}}
    assert all(a.last_layer == a.branch and not a.separable for a in adds)


def test_resnet50_has_16_and_is_fast():
    import time
    m = resnet50()
    t = time.perf_counter()
    adds = find_residual_additions(m)
    assert len(adds) == 16 and time.perf_counter() - t < 2.0
    assert all(a.branch.endswith("bn3") for a in adds)


@pytest.mark.parametrize("mixer", [False, True])
def test_vit_and_mixer_blocks_have_2_each_and_the_position_add_is_not_residual(mixer):
    adds = find_residual_additions(TinyViT(depth=3, mixer=mixer))
    assert len(adds) == 6
    assert [a.location for a in adds] == ["blocks.0", "blocks.0", "blocks.1", "blocks.1", "blocks.2", "blocks.2"]
    names = ("token_mix", "channel_mix") if mixer else ("attn", "mlp")
    assert [a.branch for a in adds[:2]] == [f"blocks.0.{n}" for n in names]
    assert all(a.skip == "identity" and a.separable for a in adds)
    if mixer:                                   # x + token_mix(...).transpose(1, 2): hooked through the transpose
        assert adds[0].branch_op == "transpose" and adds[0].last_layer == "blocks.0.token_mix.fc2"


def test_parallel_branches_and_unrelated_tensors_are_not_residual():
    assert find_residual_additions(Parallel()) == []
    assert find_residual_additions(LeakyNet()) == []


def test_untraceable_forward_traces_its_children_and_says_so():
    model = Untraceable()
    adds = find_residual_additions(model)
    assert len(adds) == 8 and adds[0].branch == "net.layer1.0.bn2"
    report = add_stochastic_depth(model, 0.1)
    assert len(report) == 8 and any("could not trace <model>" in n for n in report.notes)


def test_tracing_leaves_the_model_as_it_was():
    model = resnet_tiny()
    before = copy.deepcopy(model.state_dict())
    find_residual_additions(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ stochastic depth
def test_stochastic_depth_keeps_eval_outputs_and_keys_and_loads_the_old_state():
    torch.manual_seed(0)
    model = resnet_tiny()
    plain = copy.deepcopy(model)
    report = add_stochastic_depth(model, 0.2)
    assert len(report) == 8 and report.technique == "add_stochastic_depth"
    assert set(model.state_dict()) == set(plain.state_dict())
    model.load_state_dict(plain.state_dict(), strict=True)
    x = _img()
    assert torch.equal(model.eval()(x), plain.eval()(x))
    rates = [model.get_submodule(f"layer{i}.{j}.bn2").stochastic_depth.p for i in range(1, 5) for j in range(2)]
    assert rates == pytest.approx([0.2 * l / 8 for l in range(1, 9)])          # the paper's linear rule
    uni = resnet_tiny()
    add_stochastic_depth(uni, 0.2, rule="uniform")
    assert uni.layer1[0].bn2.stochastic_depth.p == uni.layer4[1].bn2.stochastic_depth.p == 0.2


def test_stochastic_depth_drops_rows_at_the_rate_and_scales_survivors():
    torch.manual_seed(0)
    model = Res()
    x = torch.randn(4000, 6)
    with torch.no_grad():
        f = model.f(x)
    add_stochastic_depth(model, 0.3)                      # one branch: p = 0.3
    with torch.no_grad():
        d = model.train()(x) - x
    dropped = (d == 0).all(1)
    n, p = 4000, 0.3
    assert abs(dropped.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(d[~dropped], f[~dropped] / 0.7)
    torch.testing.assert_close(model.eval()(x), x + f)
    batch = Res()
    add_stochastic_depth(batch, 0.5, mode="batch")
    with torch.no_grad():
        outs = [batch.train()(x[:8]) - x[:8] for _ in range(200)]
    whole = [bool((o == 0).all()) for o in outs]
    assert all(w or bool((o != 0).all()) for w, o in zip(whole, outs))      # the whole batch or nothing
    assert abs(sum(whole) / 200 - 0.5) < 4 * math.sqrt(0.25 / 200)


def test_stochastic_depth_paper_form_scales_at_inference():
    torch.manual_seed(0)
    model = Res()
    x = torch.randn(8, 6)
    with torch.no_grad():
        f = model.f(x)
    add_stochastic_depth(model, 0.4, form="paper")
    assert isinstance(model.f, StochasticDepthBranch) and model.f.survival_prob == pytest.approx(0.6)
    torch.testing.assert_close(model.eval()(x), x + 0.6 * f)


def test_stochastic_depth_on_vit_and_mixer_keeps_eval_and_deepcopy_has_its_own_helpers():
    for mixer in (False, True):
        torch.manual_seed(0)
        model = TinyViT(mixer=mixer)
        plain = copy.deepcopy(model)
        assert len(add_stochastic_depth(model, 0.3)) == 4
        x = torch.randn(3, 1, 16, 16)
        assert torch.equal(model.eval()(x), plain.eval()(x))
        twin = copy.deepcopy(model)
        branch = "token_mix" if mixer else "attn"
        ours, theirs = getattr(model.blocks[1], branch), getattr(twin.blocks[1], branch)
        assert ours.stochastic_depth is not theirs.stochastic_depth
        twin.train()
        assert theirs.stochastic_depth.training and not ours.stochastic_depth.training
        assert torch.equal(twin.eval()(x), model(x))
        twin.train()
        with torch.no_grad():
            outs = torch.stack([twin(x) for _ in range(8)])
        assert not torch.equal(outs[0], outs[1]) or not torch.equal(outs[2], outs[3])


def test_resnet_tiny_trains_a_few_steps_with_stochastic_depth():
    torch.manual_seed(0)
    model = resnet_tiny(num_classes=5)
    add_stochastic_depth(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _img(8), torch.randint(0, 5, (8,))
    model.train()
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.parameters())
        opt.step()


def test_stochastic_depth_restricted_by_selector():
    model = resnet_tiny()
    report = add_stochastic_depth(model, 0.2, where="layer4*")
    assert [p for p, _ in report.changed] == ["layer4.0.bn2", "layer4.1.bn2"]
    assert model.layer4[0].bn2.stochastic_depth.p == pytest.approx(0.1)      # L counts the selected branches


def test_stochastic_depth_refusals_name_the_problem():
    with pytest.raises(NothingToChangeError, match="add_stochastic_depth: found no residual additions"):
        add_stochastic_depth(LeakyNet(), 0.2)
    with pytest.raises(TypeError, match="nn.Module"):
        add_stochastic_depth(torch.zeros(3), 0.2)
    with pytest.raises(ValueError, match="drop_rate"):
        add_stochastic_depth(Res(), 1.0)
    with pytest.raises(ValueError, match="rule"):
        add_stochastic_depth(Res(), 0.1, rule="cosine")
    with pytest.raises(ValueError, match="mode"):
        add_stochastic_depth(Res(), 0.1, mode="col")
    with pytest.raises(ValueError, match="form"):
        add_stochastic_depth(Res(), 0.1, form="other")
    with pytest.raises(NothingToChangeError, match="not in a module whose output goes to the addition alone"):
        add_stochastic_depth(GeluEnd(), 0.2)
    with pytest.raises(NothingToChangeError, match="called more than once"):
        add_stochastic_depth(Twice(), 0.2)
    model = Res()
    add_stochastic_depth(model, 0.2)
    with pytest.raises(NothingToChangeError, match="already has stochastic depth"):
        add_stochastic_depth(model, 0.2)


def test_surgeries_compile():
    torch.manual_seed(0)
    model = TinyViT()
    add_stochastic_depth(model, 0.3)
    add_shakedrop(model, 0.5, where="blocks.1")
    compiled = torch.compile(model, fullgraph=False)
    x = torch.randn(4, 1, 16, 16)
    out = compiled.train()(x)
    out.sum().backward()
    assert out.shape == (4, 10) and all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(compiled.eval()(x), model.eval()(x))


# ------------------------------------------------------------------------------------------------------ ShakeDrop
def test_shakedrop_eval_is_the_expectation_and_keys_stay():
    torch.manual_seed(0)
    model = Res()
    x = torch.randn(8, 6)
    with torch.no_grad():
        f = model.f(x)
    keys = set(model.state_dict())
    report = add_shakedrop(model, p_last=0.7, alpha=(-1.0, 2.0))
    assert len(report) == 1 and set(model.state_dict()) == keys
    torch.testing.assert_close(model.eval()(x), x + (0.7 + 0.3 * 0.5) * f)


def test_shakedrop_keeps_a_row_with_probability_p_and_backward_uses_beta():
    torch.manual_seed(0)
    model = Res()
    x = torch.randn(4000, 6)
    with torch.no_grad():
        f = model.f(x)
    add_shakedrop(model, p_last=0.6)
    with torch.no_grad():
        d = model.train()(x) - x
    kept = torch.isclose(d, f).all(1)
    assert abs(kept.float().mean().item() - 0.6) < 4 * math.sqrt(0.24 / 4000)
    # always dropped (p = 0): forward coefficient alpha, backward beta, both fixed here
    a, b = Res(), None
    b = copy.deepcopy(a)
    add_shakedrop(a, p_last=0.0, rule="uniform", alpha=(0.5, 0.5), beta=(0.25, 0.25))
    xs = torch.randn(5, 6)
    ya = a.train()(xs)
    torch.testing.assert_close(ya, xs + 0.5 * b.f(xs))
    ya.sum().backward()
    b.f(xs).sum().backward()
    torch.testing.assert_close(a.f.weight.grad, 0.25 * b.f.weight.grad)


def test_shakedrop_on_resnet_and_the_wrapper_form_still_works():
    torch.manual_seed(0)
    model = resnet_tiny()
    plain = copy.deepcopy(model)
    report = add_shakedrop(model)
    assert len(report) == 8 and isinstance(model.layer1[0].bn2.shakedrop, ShakeDropScale)
    assert model.layer1[0].bn2.shakedrop.p == pytest.approx(1 - 0.5 / 8)
    assert model.layer4[1].bn2.shakedrop.p == pytest.approx(0.5)
    assert set(model.state_dict()) == set(plain.state_dict())
    model.load_state_dict(plain.state_dict(), strict=True)
    x = _img()
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    twin = copy.deepcopy(model).eval()
    assert torch.equal(twin(x), model.eval()(x))
    torch.manual_seed(0)
    wrapped = ShakeDrop(nn.Linear(4, 4), 0.5)
    z = torch.randn(3, 4)
    torch.testing.assert_close(wrapped.eval()(z), 0.5 * wrapped.branch(z))
    with pytest.raises(ValueError, match="p_last"):
        add_shakedrop(Res(), p_last=1.5)
    with pytest.raises(ValueError, match="ranges"):
        add_shakedrop(Res(), alpha=(1.0, -1.0))
    with pytest.raises(NothingToChangeError, match="residual additions"):
        add_shakedrop(LeakyNet())


# ------------------------------------------------------------------------------------------------------ zero init
def test_zero_init_zeroes_bn2_as_torchvision_does():
    torch.manual_seed(0)
    model = resnet_tiny()
    report = zero_init_residual(model)
    zeroed = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()}
    assert zeroed == {f"layer{i}.{j}.bn2" for i in range(1, 5) for j in range(2)} == {p for p, _ in report.changed}
    block = model.layer1[1]
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(block.train()(x), F.relu(x))      # the branch adds exactly 0
    model(_img()).logsumexp(1).sum().backward()
    assert block.bn2.weight.grad.abs().sum() > 0                   # and it still learns
    from traintricks.models import zero_init_residual as model_zero_init
    assert model_zero_init(resnet_tiny()) == 8 and model_zero_init(LeakyNet()) == 0


def test_zero_init_zeroes_the_last_linear_of_vit_branches():
    torch.manual_seed(0)
    model = TinyViT()
    report = zero_init_residual(model)
    assert [p for p, _ in report.changed] == ["blocks.0.attn.proj", "blocks.0.mlp.fc2", "blocks.1.attn.proj",
                                             "blocks.1.mlp.fc2"]
    assert "weight and bias set to 0" in report.changed[0][1]
    x = torch.randn(2, 16, 16)
    assert torch.equal(model.blocks[0](x), x)


def test_zero_init_refusals():
    with pytest.raises(NothingToChangeError, match="zero_init_residual: found no residual additions"):
        zero_init_residual(LeakyNet())
    with pytest.raises(TypeError):
        zero_init_residual("resnet")

    class NoAffine(nn.Module):
        def __init__(self):
            super().__init__()
            self.f, self.n = nn.Linear(4, 4), nn.LayerNorm(4, elementwise_affine=False)

        def forward(self, x):
            return x + self.n(self.f(x))

    with pytest.raises(NothingToChangeError, match="no affine weight"):
        zero_init_residual(NoAffine())


# ----------------------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("name, count", [("resnet18", 8), ("vit_tiny_patch16_224", 24)])
def test_timm_models_get_stochastic_depth_and_zero_init(name, count):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4)
    plain = copy.deepcopy(model)
    assert len(find_residual_additions(model)) == count
    assert len(add_stochastic_depth(model, 0.1)) == count
    assert set(model.state_dict()) == set(plain.state_dict())
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model.eval()(x), plain.eval()(x))
    assert len(zero_init_residual(plain)) == count
