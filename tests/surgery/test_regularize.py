"""Dropout, DropConnect and Gaussian noise placed by selector in any model, and ``model.regularization`` on models
nobody here wrote (issue 17)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tests.surgery.user_models import TinyViT, LeakyNet, resnet_tiny
from traintricks.models import MODELS, REGULARIZERS
from traintricks.nn import DropConnectConv2d, DropConnectLinear, Dropout, GaussianNoise, ShakeShake
from traintricks import surgery
from traintricks.surgery import NothingToChangeError, add_dropconnect, add_dropout, add_noise


def _img(n=4, c=3, s=16):
    return torch.randn(n, c, s, s)


def _seen_input(module: nn.Module) -> list:
    seen = []
    module.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    return seen


# --------------------------------------------------------------------------------------------------------- dropout
def test_dropout_defaults_to_the_head_input_at_rate_p_and_eval_is_unchanged():
    torch.manual_seed(0)
    model = resnet_tiny()
    plain = copy.deepcopy(model)
    report = add_dropout(model, 0.3)
    assert report.changed == [("fc", "dropout p=0.3 (element) on its input")]
    assert isinstance(model.fc.dropout_before, Dropout) and set(model.state_dict()) == set(plain.state_dict())
    model.load_state_dict(plain.state_dict(), strict=True)
    x = _img(64)
    assert torch.equal(model.eval()(x), plain.eval()(x))
    seen = _seen_input(model.fc)                   # registered after the dropout hook: sees its output
    before = []
    model.fc.register_forward_pre_hook(lambda _m, a: before.append(a[0].detach()), prepend=True)
    model.train()(x)
    live = before[0] != 0                          # the features after ReLU and pooling: some are 0 already
    n = int(live.sum())
    frac = (seen[0][live] == 0).float().mean().item()
    torch.testing.assert_close(seen[0][live & (seen[0] != 0)], before[0][live & (seen[0] != 0)] / 0.7)
    assert abs(frac - 0.3) < 4 * math.sqrt(0.21 / n)
    twin = copy.deepcopy(model.eval())
    assert twin.fc.dropout_before is not model.fc.dropout_before
    twin.train()
    assert twin.fc.dropout_before.training and not model.fc.dropout_before.training


def test_dropout_after_a_selector_and_channel_mode():
    torch.manual_seed(0)
    model = resnet_tiny()
    report = add_dropout(model, 0.5, after="layer*.0.conv1", mode="channel")
    assert [p for p, _ in report.changed] == [f"layer{i}.0.conv1" for i in range(1, 5)]
    out = []
    model.layer2[0].bn1.register_forward_pre_hook(lambda _m, a: out.append(a[0]))
    model.train()(_img(8))
    per_channel = out[0].flatten(2)
    zero = (per_channel == 0).all(2)
    assert zero.any() and ((per_channel != 0).all(2) | zero).all()          # whole channels dropped


def test_dropout_refusals():
    with pytest.raises(ValueError, match="exactly one of before= .* or after="):
        add_dropout(resnet_tiny(), before="fc", after="fc")
    with pytest.raises(ValueError, match="p must be in"):
        add_dropout(resnet_tiny(), 1.5)
    with pytest.raises(ValueError, match="mode"):
        add_dropout(resnet_tiny(), mode="pixel")
    with pytest.raises(TypeError, match="nn.Module"):
        add_dropout([nn.Linear(2, 2)])
    with pytest.raises(NothingToChangeError, match="add_dropout: found no modules matching 'nothing\\*'"):
        add_dropout(resnet_tiny(), after="nothing*")
    model = resnet_tiny()
    add_dropout(model)
    with pytest.raises(NothingToChangeError, match="already has dropout on its input"):
        add_dropout(model)


# ----------------------------------------------------------------------------------------------------- dropconnect
def test_dropconnect_swaps_the_class_in_place_with_the_same_keys():
    torch.manual_seed(0)
    model = resnet_tiny()
    plain = copy.deepcopy(model)
    fc = model.fc
    report = add_dropconnect(model, 0.4)
    assert model.fc is fc and type(fc) is DropConnectLinear and fc.p == 0.4
    assert report.changed == [("fc", "DropConnectLinear (p=0.4), weights kept")]
    assert list(model.state_dict()) == list(plain.state_dict())
    model.load_state_dict(plain.state_dict(), strict=True)
    x = _img()
    assert torch.equal(model.eval()(x), plain.eval()(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    net = LeakyNet()
    report = add_dropconnect(net, 0.2, where="type:Conv2d")
    assert len(report) == 3 and all(type(m) is DropConnectConv2d for m in net.modules() if isinstance(m, nn.Conv2d))
    net.train()(torch.randn(2, 1, 8, 8)).sum().backward()
    twin = copy.deepcopy(net)
    assert type(twin.conv) is DropConnectConv2d


def test_dropconnect_refusals():
    with pytest.raises(NothingToChangeError, match="BatchNorm2d: DropConnect replaces only nn.Linear and nn.Conv2d"):
        add_dropconnect(resnet_tiny(), where="type:BatchNorm2d")
    with pytest.raises(ValueError, match="p must be in"):
        add_dropconnect(resnet_tiny(), 1.0)
    model = resnet_tiny()
    add_dropconnect(model)
    with pytest.raises(NothingToChangeError, match="already has DropConnect"):
        add_dropconnect(model)


# ----------------------------------------------------------------------------------------------------------- noise
def test_noise_on_the_input_and_after_activations_has_std_and_eval_is_unchanged():
    torch.manual_seed(0)
    model = TinyViT()
    plain = copy.deepcopy(model)
    report = add_noise(model, 0.5, before=lambda name, m: name == "")
    assert report.changed == [("", "Gaussian noise std=0.5 on its input")]
    assert isinstance(model.noise_before, GaussianNoise)
    seen = []
    model.patch_embed.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    x = torch.randn(64, 1, 16, 16)
    model.train()(x)
    n = x.numel()
    assert abs((seen[0] - x).std().item() - 0.5) < 4 * 0.5 / math.sqrt(2 * n)
    assert torch.equal(model.eval()(x), plain.eval()(x))
    assert len(add_noise(model, 0.1, after="type:GELU")) == 2
    assert set(model.state_dict()) == set(plain.state_dict())


def test_noise_refusals():
    with pytest.raises(ValueError, match="exactly one of"):
        add_noise(TinyViT(), 0.1)
    with pytest.raises(ValueError, match="std"):
        add_noise(TinyViT(), -1.0, after="type:GELU")
    with pytest.raises(NothingToChangeError, match="add_noise: found no modules matching 'type:ReLU'"):
        add_noise(TinyViT(), 0.1, after="type:ReLU")


# ----------------------------------------------------------------------------------------- model.regularization
@pytest.mark.parametrize("name", sorted(set(REGULARIZERS.names()) - {"shake_shake"}))
def test_every_regularizer_works_on_a_torchvision_style_resnet(name):
    torch.manual_seed(0)
    model = resnet_tiny(num_classes=5)
    keys = list(model.state_dict())
    opts = {"gaussian_noise": {"where": "type:Conv2d"}}.get(name, {})
    model = REGULARIZERS.get(name)(model, **opts)
    assert list(model.state_dict()) == keys
    x = _img(8)
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    twin = REGULARIZERS.get(name)(resnet_tiny(num_classes=5), **opts)
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_every_regularizer_works_on_a_vit(name):
    torch.manual_seed(0)
    model = REGULARIZERS.get(name)(TinyViT())
    x = torch.randn(4, 1, 16, 16)
    model.train()(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert torch.equal(model(x), model(x))


def test_shake_shake_needs_a_branch_module_and_pairs_it_otherwise():
    with pytest.raises(ValueError, match=r"shake_shake needs each residual branch to be a module of its own.*"
                                         r"layer1\.0 \(branch ends in layer1\.0\.bn2\)"):
        REGULARIZERS.get("shake_shake")(resnet_tiny())
    with pytest.raises(ValueError, match="shake_shake needs residual blocks"):
        REGULARIZERS.get("shake_shake")(LeakyNet())
    vit = REGULARIZERS.get("shake_shake")(TinyViT())
    assert isinstance(vit.blocks[0].attn, ShakeShake) and isinstance(vit.blocks[1].mlp, ShakeShake)


def test_old_options_still_work_and_new_ones_apply():
    model = REGULARIZERS.get("stochastic_depth")(resnet_tiny(), survival=0.5)
    assert model.layer4[1].bn2.survival_prob == pytest.approx(0.5)                 # the paper's form, as before
    model = REGULARIZERS.get("stochastic_depth")(resnet_tiny(), survival=0.5, form="inverted", rule="uniform")
    assert model.layer1[0].bn2.stochastic_depth.p == pytest.approx(0.5)
    model = REGULARIZERS.get("shakedrop")(resnet_tiny(), survival=0.6)
    assert model.layer4[1].bn2.shakedrop.p == pytest.approx(0.6)
    model = REGULARIZERS.get("dropout")(resnet_tiny(), p=0.1, after="layer4")
    assert model.layer4.dropout_after.p == 0.1
    with pytest.raises(ValueError, match="^survival must be in"):
        REGULARIZERS.get("stochastic_depth")(resnet_tiny(), survival=0.0)
    with pytest.raises(ValueError, match="stochastic_depth needs residual blocks"):
        REGULARIZERS.get("stochastic_depth")(LeakyNet())
    with pytest.raises(ValueError, match="activation modules"):
        REGULARIZERS.get("gaussian_noise")(resnet_tiny(), where="activations")        # F.relu is not a module


def test_a_checkpoint_of_the_former_shakedrop_wrapper_loads():
    torch.manual_seed(0)
    make = lambda: MODELS.get("preact_resnet")((1, 12, 12), 5, blocks=[1, 1], widths=[4, 8], stem_width=8)  # noqa: E731
    model = REGULARIZERS.get("shakedrop")(make())
    old = {k.replace(".branch.", ".branch.branch."): v for k, v in model.state_dict().items()}
    assert set(old) != set(model.state_dict())
    fresh = REGULARIZERS.get("shakedrop")(make())
    fresh.load_state_dict(old, strict=True)
    x = torch.randn(2, 1, 12, 12)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("apply, same_outputs", [
    (lambda m: surgery.add_dropout(m, 0.3), True),
    (lambda m: surgery.add_noise(m, 0.5, before="type:Conv2d"), True),
    (lambda m: surgery.add_stochastic_depth(m, 0.5), True),
    (lambda m: surgery.add_stochastic_depth(m, 0.5, form="paper"), False),    # eval scales the branch by p
    (lambda m: surgery.add_dropconnect(m, 0.5), True),
], ids=["dropout", "noise", "stochastic_depth", "stochastic_depth_paper", "dropconnect"])
def test_surgery_on_a_model_in_eval_mode_keeps_it_in_eval_mode(apply, same_outputs):
    # found by a new user: the helpers were added in training mode, so an eval model's outputs became random
    torch.manual_seed(0)
    m = resnet_tiny().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = m(x)
    apply(m)
    assert not any(mod.training for mod in m.modules())
    if same_outputs:
        torch.testing.assert_close(m(x), ref)
    else:
        torch.testing.assert_close(m(x), m(x))         # deterministic in eval
