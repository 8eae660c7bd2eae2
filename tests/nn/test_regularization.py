
import pytest
import torch
from torch import nn

from traintricks.nn import (DropConnectConv2d, DropConnectLinear, Dropout, Dropout1d, Dropout2d, Dropout3d,
                            DropoutFunction, GaussianNoise, NoisyHardTanh, ShakeDrop, ShakeDropFunction, ShakeShake,
                            ShakeShakeFunction, StochasticDepth, StochasticDepthBranch, add_stochastic_depth,
                            linear_survival, remove_stochastic_depth, stochastic_depth)
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


def test_reference_dropout_backward_is_the_mask_and_saves_only_a_boolean_mask():
    # (the default path is PyTorch's now and saves what PyTorch saves; the boolean mask is impl="reference")
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = Dropout(0.3, impl="reference")(x)
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
    x = torch.randn(4000, 6)
    with torch.no_grad():
        f = branch(x)
    sd = add_stochastic_depth(branch, 0.7)
    with torch.no_grad():
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
    assert any(isinstance(m, StochasticDepthBranch) for m in wrapped.modules())
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())                 # strict: the unwrapped model's keys load
    plain.load_state_dict(wrapped.state_dict())
    x = torch.randn(4, 1, 12, 12)
    expect = plain.eval()(x)
    torch.testing.assert_close(apply_sd(plain, survival=1.0).eval()(x), expect)     # p = 1: the same network
    # an older checkpoint with the extra "branch." level still loads
    old = {k.replace(".branch.", ".branch.branch."): v for k, v in plain.state_dict().items()}
    wrapped.load_state_dict(old)
    plain_branch = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    keys = list(plain_branch.state_dict())
    sd = add_stochastic_depth(plain_branch, 0.5)
    assert list(sd.state_dict()) == keys
    import copy
    assert list(copy.deepcopy(sd).state_dict()) == keys


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
    layers = [lin, conv, add_stochastic_depth(nn.Linear(3, 3)), StochasticDepth(0.2, "row"), ShakeShake(nn.Linear(3, 3), nn.Linear(3, 3)),
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
              (add_stochastic_depth(nn.Linear(6, 6), 0.7), x), (add_stochastic_depth(nn.Linear(6, 6), 0.7, "batch"), x),
              (StochasticDepth(0.3, "row"), x), (StochasticDepth(0.3, "batch"), x), (Dropout2d(0.3), x4),
              (Dropout(0.3, impl="reference"), x),
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
    branch = nn.Sequential(nn.Linear(3, 3))
    branch[0].register_forward_hook(lambda *_: calls.append(1))
    sd = add_stochastic_depth(branch, 0.5, mode="batch")
    torch.manual_seed(0)
    outs = [sd(torch.randn(5, 3)) for _ in range(200)]
    zero = [bool((o == 0).all()) for o in outs]
    assert 70 < sum(zero) < 130 and all((o != 0).all() for o, z in zip(outs, zero) if not z)
    # a dropped branch runs only when dropped before any kept call (to learn its output shape, state rolled back)
    assert len(calls) == 200 - sum(zero) + int(zero[0])


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
                                  lambda: DropConnectConv2d(1, 1, 3, p=2), lambda: add_stochastic_depth(nn.Identity(), 0.0),
                                  lambda: StochasticDepth(1.5, "row"), lambda: StochasticDepth(0.5, "col"),
                                  lambda: add_stochastic_depth(nn.Identity(), 0.5, "col"), lambda: Dropout(0.1, impl="x"),
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


# ---------------------------------------------------------------- issue 15, remaining faults
import inspect  # noqa: E402

import torch.fx as fx  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FX_LAYERS = [  # (name, factory, input shape)
    ("dropout", lambda: Dropout(0.5), (3, 6)),
    ("dropout_channel", lambda: Dropout(0.5, mode="channel"), (3, 4, 5)),
    ("dropout_reference", lambda: Dropout(0.5, impl="reference"), (3, 6)),
    ("dropout1d", lambda: Dropout1d(0.5), (4, 5)),
    ("dropout2d", lambda: Dropout2d(0.5), (2, 4, 3, 3)),
    ("dropout3d", lambda: Dropout3d(0.5), (4, 2, 3, 3)),
    ("stochastic_depth", lambda: StochasticDepth(0.5, "row"), (8, 6)),
    ("stochastic_depth_batch", lambda: StochasticDepth(0.5, "batch"), (8, 6)),
    ("stochastic_depth_branch", lambda: add_stochastic_depth(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), 0.5),
     (8, 6)),
    ("stochastic_depth_branch_batch", lambda: add_stochastic_depth(nn.Linear(6, 6), 0.5, "batch"), (8, 6)),
    ("dropconnect_linear", lambda: DropConnectLinear(6, 6, p=0.5), (8, 6)),
    ("dropconnect_conv2d", lambda: DropConnectConv2d(2, 3, 3, p=0.5), (2, 2, 5, 5)),
    ("gaussian_noise", lambda: GaussianNoise(0.3), (8, 6)),
    ("noisy_hardtanh", lambda: NoisyHardTanh(), (8, 6)),
    ("shake_shake", lambda: ShakeShake(nn.Linear(6, 6), nn.Linear(6, 6)), (8, 6)),
    ("shakedrop", lambda: ShakeDrop(nn.Linear(6, 6), 0.5), (8, 6)),
]


@pytest.mark.parametrize("name,make,shape", FX_LAYERS, ids=[c[0] for c in FX_LAYERS])
def test_regression_issue15_fx_traced_layers_follow_train_and_eval(name, make, shape):
    """Remaining fault 1: fx froze train/eval at trace time (a traced Dropout still dropped after .eval()) and
    channel dropout could not be traced. Every layer whose forward reads ``training`` is one call_module node."""
    torch.manual_seed(0)
    m = make()
    x = torch.randn(*shape, dtype=torch.float64) * 3
    m = m.double()
    gm = fx.symbolic_trace(nn.Sequential(m))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    torch.testing.assert_close(gm.eval()(x), m.eval()(x), rtol=0, atol=0)
    gm.train()
    m.train()
    torch.manual_seed(5)
    ref = m(x)
    torch.manual_seed(5)
    torch.testing.assert_close(gm(x), ref, rtol=0, atol=0)


def test_regression_issue15_fx_dropout_example_from_the_report():
    g = fx.symbolic_trace(nn.Sequential(Dropout(0.5)))
    g.eval()
    assert torch.equal(g(torch.ones(1, 6)), torch.ones(1, 6))
    g = fx.symbolic_trace(nn.Sequential(add_stochastic_depth(nn.Linear(6, 6), 0.5)))
    x = torch.randn(3, 6)
    lin = g.get_submodule("0")
    torch.testing.assert_close(g.eval()(x), 0.5 * F.linear(x, lin.weight, lin.bias))
    fx.symbolic_trace(nn.Sequential(Dropout(0.5, mode="channel")))      # TraceError (control flow) before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_regression_issue15_dropout_bit_equal_to_torch_in_low_precision_and_channels_last(dtype, impl):
    """Remaining fault 2: bf16/fp16 values differed by 1 ulp (~10%); channels_last masks were drawn in another
    order. Both implementations equal F.dropout bit for bit on the CPU, gradients too."""
    x0 = torch.randn(4, 6, 5, 5).to(dtype)
    for x in (x0, x0.to(memory_format=torch.channels_last), x0.transpose(1, 3)):
        for mode, torch_fn in (("element", F.dropout), ("channel", F.dropout2d)):
            xo, xr = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
            torch.manual_seed(3)
            ours = Dropout(0.3, mode=mode, impl=impl)(xo)
            torch.manual_seed(3)
            ref = torch_fn(xr, 0.3, True)
            assert ours.dtype == ref.dtype and torch.equal(ours, ref), (mode, x.stride())
            g = torch.randn_like(ref)
            assert torch.equal(torch.autograd.grad(ours, xo, g)[0], torch.autograd.grad(ref, xr, g)[0])


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_regression_issue15_dropout_integer_input_raises_torchs_error(impl):
    x = torch.ones(4, 3, dtype=torch.long)
    with pytest.raises(RuntimeError) as ref:
        F.dropout(x, 0.5)
    with pytest.raises(RuntimeError) as ours:
        Dropout(0.5, impl=impl)(x)
    assert str(ours.value) == str(ref.value)
    assert torch.equal(Dropout(0.5, impl=impl).eval()(x), F.dropout(x, 0.5, training=False))


def test_regression_issue15_functional_dropout_has_torchs_positional_order():
    from traintricks.nn import dropout
    params = list(inspect.signature(dropout).parameters.values())
    assert [p.name for p in params[:4]] == list(inspect.signature(F.dropout).parameters)
    assert all(p.kind is p.KEYWORD_ONLY for p in params[4:])
    a = torch.randn(5, 7)
    b = a.clone()
    torch.manual_seed(1)
    out = dropout(a, 0.4, True, True)                     # 4th positional: inplace, as F.dropout
    torch.manual_seed(1)
    ref = F.dropout(b, 0.4, True, True)
    assert out is a and torch.equal(a, ref)
    with pytest.raises(TypeError, match="mode="):
        dropout(a, 0.4, "channel")


def test_reference_dropout_backward_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 5) > 0.4
    assert torch.autograd.gradcheck(lambda t: DropoutFunction.apply(t, mask, 1 / 0.6), (x,))


@pytest.mark.parametrize("cls,torch_cls,shapes", [
    (Dropout1d, nn.Dropout1d, [(3, 4, 5), (4, 5)]),
    (Dropout2d, nn.Dropout2d, [(2, 3, 4, 5), (3, 4, 5)]),
    (Dropout3d, nn.Dropout3d, [(2, 3, 2, 4, 5), (3, 2, 4, 5)]),
])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_regression_issue15_dropout_nd_are_torchs_twins_unbatched_included(cls, torch_cls, shapes, impl):
    import warnings
    assert isinstance(cls(), torch_cls) and inspect.signature(cls).parameters.keys() >= {"p", "inplace"}
    for shape in shapes:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                 # dropout2d's 3-D-input warning
            torch.manual_seed(2)
            ours = cls(0.5, impl=impl)(x)
            torch.manual_seed(2)
            ref = torch_cls(0.5)(x)
        assert torch.equal(ours, ref), shape
        g = torch.randn_like(ref)
        assert torch.equal(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0])
        a, b = x.detach().clone(), x.detach().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(2)
            out = cls(0.5, True, impl=impl)(a)
            torch.manual_seed(2)
            torch_cls(0.5, True)(b)
        assert out is a and torch.equal(a, b)
    if cls is Dropout1d:
        with pytest.raises(RuntimeError, match="Expected 2D or 3D input"):
            cls(0.5, impl=impl)(torch.randn(2, 3, 4, 5))


def test_regression_issue15_stochastic_depth_one_name_per_parameter():
    """Remaining fault 3a: state_dict keys `0.branch.0.weight` vs named_parameters `0.branch.branch.0.weight`;
    functional_call with the state_dict raised AttributeError; get_parameter of a state_dict key failed."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), nn.Linear(3, 2))
    m = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), nn.Linear(3, 2))
    add_stochastic_depth(m[0], 0.5)
    params = dict(m.named_parameters())
    sd = m.state_dict()
    assert set(params) <= set(sd) and list(sd) == list(plain.state_dict())
    assert list(dict(m.named_buffers())) == [k for k in sd if k not in params]
    for k in params:
        assert m.get_parameter(k) is params[k]
    x = torch.randn(4, 3)
    m.eval()
    torch.testing.assert_close(torch.func.functional_call(m, m.state_dict(), (x,)), m(x))
    m.load_state_dict(plain.state_dict(), strict=True)          # the plain model's weights load strictly
    plain.load_state_dict(m.state_dict(), strict=True)
    plain.eval()
    torch.testing.assert_close(m(x), plain[1](plain[0](x) * 0.5))
    missing = m.load_state_dict({k: v for k, v in plain.state_dict().items() if k != "0.0.weight"}, strict=False)
    assert missing.missing_keys == ["0.0.weight"]                # keys the user sees
    import io
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert isinstance(again[0], StochasticDepthBranch) and isinstance(again[0], nn.Sequential)
    torch.testing.assert_close(again.eval()(x), m(x))
    assert type(remove_stochastic_depth(m[0])) is nn.Sequential and list(m.state_dict()) == list(sd)
    with pytest.raises(ValueError, match="already has"):
        add_stochastic_depth(add_stochastic_depth(nn.Linear(2, 2)))


def test_regression_issue15_stochastic_depth_module_is_torchvisions():
    """Remaining fault 3b: StochasticDepth(0.2, "row") raised TypeError; it is torchvision's module (drop
    probability, on the branch's output) -- the same values as its function under the same seed."""
    x = torch.randn(64, 3, 4, dtype=torch.float64, requires_grad=True)
    for mode in ("row", "batch"):
        m = StochasticDepth(0.2, mode)
        assert repr(m) == f"StochasticDepth(p=0.2, mode={mode})"
        torch.manual_seed(0)
        y = m(x)
        torch.manual_seed(0)
        noise = torch.empty((64, 1, 1) if mode == "row" else (1, 1, 1), dtype=torch.float64).bernoulli_(0.8)
        torch.testing.assert_close(y, x * noise.div_(0.8), rtol=0, atol=0)
        assert m.eval()(x) is x
    with pytest.raises(TypeError, match="add_stochastic_depth"):
        StochasticDepth(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match="drop probability"):
        StochasticDepth(1.2, "row")


def test_regression_issue15_stochastic_depth_dropped_batch_does_not_move_batchnorm():
    """Remaining fault 3c: mode='batch' ran a dropped branch to learn its output shape, so BN statistics moved on
    a dropped batch (output 0 but num_batches_tracked == 1)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    sd = add_stochastic_depth(nn.Sequential(nn.Linear(3, 3), bn), 1e-6, mode="batch")
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(8, 3)
    rng = torch.get_rng_state()
    out = sd(x)
    after = torch.get_rng_state()
    assert torch.equal(out, torch.zeros(8, 3)) and int(bn.num_batches_tracked) == 0
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.set_rng_state(rng)
    torch.rand(())                                                # the drop decision: one CPU draw, nothing more
    assert torch.equal(torch.get_rng_state(), after)
    # a branch that changes the shape: zeros of its output shape (learned), still no state change
    down = add_stochastic_depth(nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5)), 1e-6, "batch")
    assert down(x).shape == (8, 5) and int(down[1].num_batches_tracked) == 0


def test_regression_issue15_dropconnect_signatures_are_torchs_plus_keyword_p():
    for ours, theirs in ((DropConnectConv2d, nn.Conv2d), (DropConnectLinear, nn.Linear)):
        o = list(inspect.signature(ours).parameters.values())
        t = list(inspect.signature(theirs).parameters.values())
        assert [(p.name, p.default, p.kind) for p in o[:-1]] == [(p.name, p.default, p.kind) for p in t]
        assert o[-1].name == "p" and o[-1].kind is o[-1].KEYWORD_ONLY
    torch.manual_seed(0)
    a = DropConnectConv2d(2, 4, 3, 2, 1, 1, 2, False, "reflect", None, torch.float64, p=0.3)
    torch.manual_seed(0)
    b = nn.Conv2d(2, 4, 3, 2, 1, 1, 2, False, "reflect", None, torch.float64)
    assert list(a.state_dict()) == list(b.state_dict()) and torch.equal(a.weight, b.weight)
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    assert torch.equal(a.eval()(x), b(x))
