import math

import pytest
import torch
from torch import nn

from traintricks.nn import (DropConnectConv2d, DropConnectLinear, Dropout, GaussianNoise, NoisyHardTanh, ShakeDrop,
                            ShakeDropFunction, ShakeShake, ShakeShakeFunction, StochasticDepth, linear_survival,
                            stochastic_depth)
from traintricks.optim import ClipByGlobalNorm


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_preserves_expectation_and_drops_a_fraction_p(p):
    torch.manual_seed(0)
    x = torch.rand(200, 500) + 0.5
    y = Dropout(p).train()(x)
    zero = (y == 0).float().mean().item()
    assert abs(zero - p) < 0.01
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01
    assert torch.equal(Dropout(p).eval()(x), x)


def test_dropout_backward_is_the_mask_and_saves_only_a_boolean_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = Dropout(0.3)(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7)
    assert [t.dtype for t in saved] == [torch.bool]


def test_channel_dropout_drops_whole_channels_per_sample():
    torch.manual_seed(0)
    x = torch.ones(16, 8, 5, 5)
    y = Dropout(0.5, mode="channel")(x)
    per_channel = y.flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all()
    dropped = (per_channel == 0).all(-1)
    assert 0.3 < dropped.float().mean() < 0.7
    assert not (dropped.all(0) | (~dropped).all(0)).all()      # different samples, different channels


def test_regression_issue15_item12_dropout_p1_gives_zeros_and_takes_inplace_as_torch():
    x = torch.randn(5, 4, requires_grad=True)
    y = Dropout(p=1.0)(x)
    assert torch.equal(y, torch.zeros(5, 4)) and torch.equal(y, nn.Dropout(p=1.0)(x))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(5, 4))
    assert isinstance(Dropout(), nn.Dropout) and Dropout(0.2, True).inplace
    for p in (0.0, 0.3, 1.0):
        a, b = torch.randn(6, 7), None
        b = a.clone()
        torch.manual_seed(1)
        out = Dropout(p, inplace=True)(a)
        torch.manual_seed(1)
        ref = nn.Dropout(p, inplace=True)(b)
        assert out is a and torch.equal(a, b) and torch.equal(out, ref)
    with pytest.raises(TypeError, match="mode="):
        Dropout(0.2, "channel")                     # the second argument is torch's inplace


@pytest.mark.parametrize("mode,torch_fn", [("element", nn.functional.dropout), ("channel", nn.functional.dropout2d)])
def test_dropout_equals_torch_dropout_under_the_same_seed(mode, torch_fn):
    x = torch.randn(8, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    ours = Dropout(0.4, mode=mode)(x)
    torch.manual_seed(3)
    ref = torch_fn(x, 0.4, True)
    assert torch.equal(ours, ref)
    g = torch.randn_like(ours)
    assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])


# ---------------------------------------------------------------- DropConnect
def test_dropconnect_masks_weights_once_per_batch():
    torch.manual_seed(0)
    layer = DropConnectLinear(20, 30, p=0.4, bias=False)
    eye = torch.eye(20)
    y = layer(torch.cat([eye, eye]))             # each row of the identity reads one column of W_masked
    w_seen = y[:20].T
    assert torch.equal(y[:20], y[20:])            # the same mask for every sample of the batch
    zero = w_seen == 0
    assert abs(zero.float().mean().item() - 0.4) < 0.06
    torch.testing.assert_close(w_seen[~zero], layer.weight[~zero] / 0.6)
    assert not torch.equal(layer(eye), y[:20])   # the next batch draws a new mask


def test_dropconnect_inference_rule_is_the_expectation():
    torch.manual_seed(0)
    lin = DropConnectLinear(10, 4, p=0.5)
    conv = DropConnectConv2d(3, 4, 3, p=0.3, padding=1)
    for layer, x in ((lin, torch.randn(5, 10)), (conv, torch.randn(2, 3, 6, 6))):
        with torch.no_grad():
            mean = torch.stack([layer.train()(x) for _ in range(4000)]).mean(0)
            exact = layer.eval()(x)
        torch.testing.assert_close(mean, exact, rtol=0.0, atol=0.08 * exact.abs().max().item())
        assert torch.equal(layer.eval()(x), nn.functional.linear(x, layer.weight, layer.bias)
                           if layer is lin else layer._conv_forward(x, layer.weight, layer.bias))


def test_dropconnect_gradient_reaches_only_kept_weights():
    torch.manual_seed(0)
    layer = DropConnectLinear(8, 6, p=0.5, bias=False)
    torch.manual_seed(5)
    layer(torch.eye(8)).sum().backward()
    grad = layer.weight.grad
    torch.manual_seed(5)
    with torch.no_grad():
        mask = layer(torch.eye(8)).T != 0
    assert torch.equal(grad != 0, mask)
    torch.testing.assert_close(grad[mask], torch.full_like(grad[mask], 2.0))


# ---------------------------------------------------------------- stochastic depth
def test_linear_survival_rule():
    assert linear_survival(4, 0.5) == pytest.approx([0.875, 0.75, 0.625, 0.5])
    with pytest.raises(ValueError):
        linear_survival(3, 0.0)


def test_stochastic_depth_drops_per_sample_and_scales_at_inference():
    torch.manual_seed(0)
    branch = nn.Linear(6, 6)
    sd = StochasticDepth(branch, 0.7)
    x = torch.randn(4000, 6)
    with torch.no_grad():
        f = branch(x)
        y = sd.train()(x)
    dropped = (y == 0).all(1)
    assert torch.equal(y[~dropped], f[~dropped])
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    torch.testing.assert_close(sd.eval()(x), 0.7 * f)
    torch.testing.assert_close(y.mean(0), (0.7 * f).mean(0), atol=0.05, rtol=0)


def test_regression_issue15_item12_stochastic_depth_keeps_the_branch_keys():
    from traintricks.models.regularizers import stochastic_depth as apply_sd
    torch.manual_seed(0)
    plain = _model("[]")
    wrapped = _model('["stochastic_depth"]')
    assert any(isinstance(m, StochasticDepth) for m in wrapped.modules())
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())                 # strict: the unwrapped model's keys load
    plain.load_state_dict(wrapped.state_dict())
    x = torch.randn(4, 1, 12, 12)
    expect = plain.eval()(x)
    torch.testing.assert_close(apply_sd(plain, survival=1.0).eval()(x), expect)     # p = 1: the same network
    # an older checkpoint with the extra "branch." level still loads
    old = {k.replace(".branch.", ".branch.branch."): v for k, v in plain.state_dict().items()}
    wrapped.load_state_dict(old)
    sd = StochasticDepth(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), 0.5)
    assert list(sd.state_dict()) == list(sd.branch.state_dict())
    import copy
    assert list(copy.deepcopy(sd).state_dict()) == list(sd.branch.state_dict())


def test_stochastic_depth_functional_has_torchvision_semantics():
    x = torch.randn(4000, 3, dtype=torch.float64)
    assert stochastic_depth(x, 0.3, "row", training=False) is x and stochastic_depth(x, 0.0, "row") is x
    torch.manual_seed(0)
    y = stochastic_depth(x, 0.3, "row")
    torch.manual_seed(0)
    noise = torch.empty(4000, 1, dtype=torch.float64).bernoulli_(0.7).div_(0.7)   # torchvision's draw and scale
    torch.testing.assert_close(y, x * noise, rtol=0, atol=0)
    kept = (y != 0).all(1)
    assert abs(kept.double().mean().item() - 0.7) < 0.03
    batch = [stochastic_depth(x[:5], 0.5, "batch") for _ in range(200)]
    assert all(torch.equal(b, torch.zeros_like(b)) or torch.allclose(b, x[:5] * 2) for b in batch)
    assert 60 < sum(bool((b == 0).all()) for b in batch) < 140
    assert torch.equal(stochastic_depth(x, 1.0, "row"), torch.zeros_like(x))
    with pytest.raises(ValueError, match="drop probability"):
        stochastic_depth(x, 1.5, "row")
    with pytest.raises(ValueError, match="mode"):
        stochastic_depth(x, 0.5, "col")


def test_regression_issue15_item12_clip_by_global_norm_returns_the_total_norm_as_clip_grad_norm():
    torch.manual_seed(0)
    a, b = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    c, d = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    for p in (a, b, c, d):
        p.grad = torch.randn_like(p) * 3
    c.grad, d.grad = a.grad.clone(), b.grad.clone()
    ours = ClipByGlobalNorm(max_norm=1.0)([a, b])
    ref = torch.nn.utils.clip_grad_norm_([c, d], max_norm=1.0)
    assert isinstance(ours, torch.Tensor) and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, c.grad, rtol=0, atol=0)
    torch.testing.assert_close(b.grad, d.grad, rtol=0, atol=0)
    assert float(ClipByGlobalNorm()([nn.Parameter(torch.ones(2))])) == 0.0     # no gradients: tensor(0.)


def test_every_layer_resets_and_takes_device_dtype():
    torch.manual_seed(0)
    lin = DropConnectLinear(4, 3, True, "cpu", torch.float64, p=0.2)
    conv = DropConnectConv2d(2, 3, 3, device="cpu", dtype=torch.float64, p=0.2)
    assert lin.weight.dtype == conv.weight.dtype == torch.float64 and lin.p == 0.2
    layers = [lin, conv, StochasticDepth(nn.Linear(3, 3)), ShakeShake(nn.Linear(3, 3), nn.Linear(3, 3)),
              ShakeDrop(nn.Linear(3, 3)), GaussianNoise(), NoisyHardTanh(), Dropout()]
    from traintricks.losses import LargeMarginSoftmax
    layers.append(LargeMarginSoftmax(4, 3, device="cpu", dtype=torch.float64))
    for layer in layers:
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        with torch.no_grad():
            for p in layer.parameters():
                p.fill_(0.123)
        layer.reset_parameters()
        for k, v in layer.state_dict().items():
            assert not torch.equal(v, torch.full_like(v, 0.123)), (type(layer).__name__, k)
            assert v.shape == before[k].shape


@pytest.mark.parametrize("train", [True, False])
def test_regularization_layers_have_no_graph_breaks(train):
    import torch._dynamo
    x, x4 = torch.randn(8, 6), torch.randn(4, 3, 5, 5)
    layers = [(Dropout(0.3), x), (Dropout(0.3, mode="channel"), x4), (Dropout(1.0), x),
              (StochasticDepth(nn.Linear(6, 6), 0.7), x), (StochasticDepth(nn.Linear(6, 6), 0.7, mode="batch"), x),
              (GaussianNoise(0.1), x), (NoisyHardTanh(), x), (ShakeShake(nn.Linear(6, 6), nn.Linear(6, 6)), x),
              (ShakeDrop(nn.Linear(6, 6), 0.5), x), (DropConnectLinear(6, 6, p=0.3), x)]
    for layer, inp in layers:
        torch._dynamo.reset()
        explain = torch._dynamo.explain(layer.train(train))(inp)
        assert explain.graph_break_count <= 0 and not explain.break_reasons, (layer, explain.break_reasons)
    torch._dynamo.reset()
    assert not torch._dynamo.explain(lambda t: stochastic_depth(t, 0.2, "row", train))(x).break_reasons


def test_stochastic_depth_batch_mode_drops_the_whole_batch_without_computing():
    calls = []
    branch = nn.Linear(3, 3)
    branch.register_forward_hook(lambda *_: calls.append(1))
    sd = StochasticDepth(branch, 0.5, mode="batch")
    torch.manual_seed(0)
    outs = [sd(torch.randn(5, 3)) for _ in range(200)]
    zero = [bool((o == 0).all()) for o in outs]
    assert 70 < sum(zero) < 130 and all((o != 0).all() for o, z in zip(outs, zero) if not z)
    assert len(calls) == 200 - sum(zero) + 1          # +1: the output shape, learned once


# ---------------------------------------------------------------- Shake-Shake
def test_shake_shake_function_uses_beta_backward_not_alpha():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    alpha = torch.tensor([[0.1], [0.9], [0.3], [0.5]])
    beta = torch.tensor([[0.7], [0.2], [0.6], [0.0]])
    y = ShakeShakeFunction.apply(a, b, alpha, beta)
    torch.testing.assert_close(y, alpha * a + (1 - alpha) * b)
    g = torch.randn(4, 3)
    y.backward(g)
    torch.testing.assert_close(a.grad, beta * g)
    torch.testing.assert_close(b.grad, (1 - beta) * g)


def test_shake_shake_module_per_image_coefficients_and_inference():
    torch.manual_seed(0)
    b1, b2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    m = ShakeShake(b1, b2)
    x = torch.randn(64, 2, 4, 4)
    outs = {}
    b1.register_forward_hook(lambda _m, _i, o: outs.__setitem__("a", o))
    b2.register_forward_hook(lambda _m, _i, o: outs.__setitem__("b", o))
    for o in ("a", "b"):
        pass
    y = m(x)
    a, b = outs["a"], outs["b"]
    a.retain_grad(), b.retain_grad()
    g = torch.randn_like(y)
    y.backward(g)
    alpha = ((y - b) / (a - b)).detach().flatten(1)
    beta = (a.grad / g).flatten(1)
    # one coefficient per image, in (0, 1), forward and backward independent
    assert torch.allclose(alpha, alpha[:, :1].expand_as(alpha), atol=1e-3)
    assert torch.allclose(beta, beta[:, :1].expand_as(beta), atol=1e-4)
    alpha, beta = alpha[:, 0], beta[:, 0]
    assert (alpha > 0).all() and (alpha < 1).all() and (beta > 0).all() and (beta < 1).all()
    assert alpha.std() > 0.1 and (alpha - beta).abs().mean() > 0.1
    torch.testing.assert_close(a.grad + b.grad, g)
    m.eval()
    torch.testing.assert_close(m(x), 0.5 * (b1(x) + b2(x)))
    with pytest.raises(ValueError, match="exactly two"):
        ShakeShake(b1, b2, nn.Identity())


# ---------------------------------------------------------------- ShakeDrop
def test_shakedrop_forward_and_backward_coefficients():
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(1))

    class Scale(nn.Module):
        def forward(self, x):
            return x * w
    m = ShakeDrop(Scale(), p=0.5)
    x = torch.ones(20000, 1)
    y = m(x)
    y.backward(torch.ones_like(y))
    fwd = y.detach()[:, 0]
    kept = fwd == 1.0                           # b = 1: coefficient exactly 1 both ways
    assert abs(kept.float().mean().item() - 0.5) < 0.02
    assert (fwd[~kept] >= -1).all() and (fwd[~kept] <= 1).all() and fwd[~kept].min() < -0.9
    assert abs(fwd.mean().item() - 0.5) < 0.02     # E = p_l
    # the gradient uses beta in [0, 1]: per image, recover it by a second pass with a per-image probe
    f = torch.ones(6, 1, requires_grad=True)
    fc = torch.tensor([[1.0], [1.0], [-0.5], [0.3], [0.9], [-1.0]])
    bc = torch.tensor([[1.0], [1.0], [0.2], [0.7], [0.1], [0.5]])
    ShakeDropFunction.apply(f, fc, bc).sum().backward()
    torch.testing.assert_close(f.grad, bc)
    m.eval()
    torch.testing.assert_close(m(x[:3]), 0.5 * x[:3])
    with pytest.raises(ValueError, match="p must be in"):
        ShakeDrop(Scale(), p=1.5)


# ---------------------------------------------------------------- noise
def test_gaussian_noise_is_unbiased_with_the_given_std_and_off_at_inference():
    torch.manual_seed(0)
    x = torch.randn(100000)
    y = GaussianNoise(0.3)(x)
    assert abs((y - x).mean().item()) < 0.005 and abs((y - x).std().item() - 0.3) < 0.005
    assert torch.equal(GaussianNoise(0.3).eval()(x), x)
    with pytest.raises(ValueError):
        GaussianNoise(-1)


def test_noisy_hardtanh_is_linear_inside_noisy_when_saturated_and_expectation_at_inference():
    torch.manual_seed(0)
    act = NoisyHardTanh()
    inside = torch.linspace(-0.99, 0.99, 50)
    torch.testing.assert_close(act(inside), inside)
    x = torch.full((50000,), 3.0, requires_grad=True)
    y = act(x)
    # alpha > 1: the deterministic part alpha*h + (1-alpha)*x = 0.7 lies below h = 1, and the half-normal
    # noise, signed by d(x) = -sign(x) sign(1 - alpha) = +1, points from there towards h
    assert y.std() > 0.01 and (y >= act.alpha * 1 + (1 - act.alpha) * 3 - 1e-6).all()
    y.sum().backward()
    assert (x.grad != 0).all() and x.grad.abs().mean() > 0.05   # hard-tanh alone gives exactly 0 here
    torch.testing.assert_close(y.mean(), act.eval()(x[:1])[0], atol=2e-3, rtol=0)


# ---------------------------------------------------------------- bad hyper-parameters
@pytest.mark.parametrize("make", [lambda: Dropout(1.5), lambda: Dropout(-0.1), lambda: DropConnectLinear(2, 2, p=1.0),
                                  lambda: DropConnectConv2d(1, 1, 3, p=2), lambda: StochasticDepth(nn.Identity(), 0.0),
                                  lambda: Dropout(0.1, mode="pixel")])
def test_bad_hyper_parameters_are_rejected(make):
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------- by name, in models, from a config
from traintricks.config import ConfigError, load_config  # noqa: E402
from traintricks.models import MODELS, REGULARIZERS  # noqa: E402
from traintricks.training.recipe import build_model  # noqa: E402

RESNET = ["model.name=preact_resnet", "model.widths=[4, 8]", "model.blocks=[1, 1]", "model.stem_width=8"]


def _model(regs, extra=()):
    cfg = load_config(overrides=RESNET + [f"model.regularization={regs}"] + list(extra))
    torch.manual_seed(0)
    return build_model(cfg, (1, 12, 12), 5)


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_every_regularizer_trains_in_the_resnet_and_survives_state_dict(name):
    model = _model(f'["{name}"]')
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 5, (8,))
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    twin = _model(f'["{name}"]')
    twin.load_state_dict(model.state_dict())
    twin.eval()
    assert torch.equal(twin(x), model(x))                 # inference is deterministic and fully in the state
    assert not torch.equal(model.train()(x), model.train()(x)) or name == "dropconnect"


def test_regularizers_compose_and_compile():
    model = _model('["dropout", {name = "shakedrop", survival = 0.6}, {name = "gaussian_noise", std = 0.05}]')
    compiled = torch.compile(model)
    x = torch.randn(4, 1, 12, 12)
    out = compiled(x)
    out.sum().backward()
    assert out.shape == (4, 5)
    model.eval()
    torch.testing.assert_close(compiled(x), model(x))
    m2 = _model('["shake_shake", "stochastic_depth", "dropconnect"]')
    c2 = torch.compile(m2)
    c2(x).sum().backward()
    m2.eval()
    torch.testing.assert_close(c2(x), m2(x))


def test_residual_regularizers_need_a_resnet_and_bad_options_name_the_key():
    cfg = load_config(overrides=['model.regularization=["stochastic_depth"]'])     # the default cnn
    with pytest.raises(ConfigError, match=r"model.regularization\[0\].*residual blocks"):
        build_model(cfg, (1, 12, 12), 5)
    with pytest.raises(ConfigError, match=r"model.regularization\[0\].*unknown regularizer 'dropcnnect'"):
        load_config(overrides=['model.regularization=["dropcnnect"]'])
    with pytest.raises(ConfigError, match=r"model.regularization\[0\].q.*unknown option"):
        load_config(overrides=['model.regularization=[{name = "dropout", q = 0.1}]'])
    with pytest.raises(ConfigError, match=r"model.regularization\[0\]"):
        build_model(load_config(overrides=RESNET + ['model.regularization=[{name = "dropout", p = 1.5}]']),
                    (1, 12, 12), 5)


def test_dropout_regularizer_acts_on_the_head_input():
    model = _model('[{name = "dropout", p = 0.5}]')
    seen = []
    model.head.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    model.train()(torch.randn(64, 1, 12, 12))
    frac = (seen[0] == 0).float().mean().item()
    assert 0.35 < frac < 0.65
    assert isinstance(MODELS.get("mlp")((1, 4, 4), 3, dropout=0.2).net[3], Dropout)
