import inspect

import pytest
import torch
from torch import nn

from traintricks.errors import NonFiniteInputError
from traintricks.nn import (NORMS, GroupLayerNorm, GroupNorm, GroupNormFunction, InstanceNorm1d, InstanceNorm2d,
                            InstanceNorm3d, LayerNorm)

IMPLS = ["fast", "reference"]
D = torch.float64


@pytest.mark.parametrize("shape, groups", [((4, 6, 3, 5), 3), ((5, 4), 2), ((3, 6, 7), 6), ((2, 4, 3, 3), 1),
                                           ((2, 4, 2, 3, 2), 2)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontig"])
@pytest.mark.parametrize("affine", [True, False])
def test_hand_written_backward_passes_gradcheck_and_gradgradcheck(shape, groups, layout, affine):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=D)
    if layout == "channels_last":
        if x.ndim not in (4, 5):
            pytest.skip("channels_last is for 4-D and 5-D inputs")
        x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
    elif layout == "noncontig":
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
        assert not x.is_contiguous()
    x.requires_grad_()
    g = torch.randn(shape[1], dtype=D, requires_grad=True) if affine else None
    b = torch.randn(shape[1], dtype=D, requires_grad=True) if affine else None

    def f(*a):
        return GroupNormFunction.apply(a[0], g if not affine else a[1], b if not affine else a[2], groups, 1e-5)[0]
    inputs = (x, g, b) if affine else (x,)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def _layers(impl):
    return [GroupNorm(2, 4, impl=impl), GroupLayerNorm(4, impl=impl), LayerNorm([3, 2], impl=impl),
            InstanceNorm2d(4, affine=True, impl=impl), InstanceNorm2d(4, affine=True, track_running_stats=True,
                                                                      impl=impl)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("train", [True, False])
def test_module_gradcheck_and_gradgradcheck_train_and_eval(impl, which, train):
    torch.manual_seed(0)
    m = _layers(impl)[which].double().train(train)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(3, 4, 3, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: m(a), (x,))
    assert torch.autograd.gradgradcheck(lambda a: m(a), (x,))


def _native_pairs():
    return [
        (lambda i: GroupNorm(4, 8, impl=i), lambda: nn.GroupNorm(4, 8), (6, 8, 5, 5)),
        (lambda i: GroupNorm(4, 8, impl=i), lambda: nn.GroupNorm(4, 8), (6, 8, 9)),
        (lambda i: InstanceNorm2d(8, affine=True, impl=i), lambda: nn.InstanceNorm2d(8, affine=True), (6, 8, 5, 5)),
        (lambda i: InstanceNorm2d(8, impl=i), lambda: nn.InstanceNorm2d(8), (6, 8, 5, 5)),
        (lambda i: GroupLayerNorm(8, impl=i), lambda: nn.GroupNorm(1, 8), (6, 8, 5, 5)),
        (lambda i: GroupLayerNorm(8, impl=i), lambda: nn.LayerNorm(8), (6, 8)),
        (lambda i: LayerNorm(5, impl=i), lambda: nn.LayerNorm(5), (6, 8, 5, 5)),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pair", range(len(_native_pairs())))
def test_matches_pytorch_modules(impl, channels_last, pair):
    ours_f, native_f, shape = _native_pairs()[pair]
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last is for 4-D inputs")
    torch.manual_seed(0)
    ours, theirs = ours_f(impl), native_f()
    if ours.weight is not None:
        with torch.no_grad():
            for m in (ours, theirs):
                m.weight.copy_(torch.linspace(0.5, 2, m.weight.numel()).view_as(m.weight))
                m.bias.copy_(torch.linspace(-1, 1, m.bias.numel()).view_as(m.bias))
    x = torch.randn(*shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    if channels_last and isinstance(theirs, nn.GroupNorm):
        assert ya.is_contiguous(memory_format=torch.channels_last) == yb.is_contiguous(
            memory_format=torch.channels_last)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    if ours.weight is not None:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-4)


def _layouts():
    """(name, input) pairs: every memory layout and rank PyTorch's GroupNorm accepts."""
    torch.manual_seed(0)
    base = torch.randn(4, 6, 3, 2, dtype=D)
    return [
        ("issue15_strided_channels", base[:, ::2]),                        # the issue's example, (4, 3, 3, 2)
        ("transposed", torch.randn(2, 3, 5, 4, dtype=D).transpose(2, 3)),
        ("channels_last", torch.randn(4, 3, 3, 2, dtype=D).contiguous(memory_format=torch.channels_last)),
        ("channels_last_3d", torch.randn(2, 3, 2, 3, 2, dtype=D).contiguous(memory_format=torch.channels_last_3d)),
        ("2d", torch.randn(5, 3, dtype=D)),
        ("2d_strided", torch.randn(5, 6, dtype=D)[:, 1::2]),
        ("3d", torch.randn(4, 3, 7, dtype=D)),
        ("4d", torch.randn(4, 3, 3, 2, dtype=D)),
        ("5d", torch.randn(2, 3, 2, 3, 2, dtype=D)),
        ("expanded", torch.randn(1, 3, 4, 1, dtype=D).expand(3, 3, 4, 5)),
        ("empty_batch", torch.randn(0, 3, 4, dtype=D)),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(_layouts())))
def test_groupnorm_every_layout_as_pytorch_issue15(impl, case):
    """issue 15: ``GroupNorm(3, 3)(torch.randn(4, 6, 3, 2)[:, ::2])`` crashed (non-contiguous input); every
    layout now gives PyTorch's output and gradients."""
    name, x = _layouts()[case]
    ours, theirs = GroupNorm(3, 3, impl=impl).double(), nn.GroupNorm(3, 3).double()
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    if name in ("issue15_strided_channels", "transposed", "2d_strided", "expanded"):
        xa = x.detach().requires_grad_()       # the strided view itself, not a copy
        assert not xa.is_contiguous()
    ya, yb = ours(xa), theirs(xb)
    assert ya.shape == x.shape
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("t", [7, 32])
def test_layernorm_normalizes_the_last_dims_as_pytorch_issue15(impl, t):
    """issue 15: ``LayerNorm(32)`` on (B, T, 32) raised, and normalized the wrong axes when T == 32."""
    torch.manual_seed(0)
    x = torch.randn(3, t, 32, dtype=D) * 2 + 1
    ours, theirs = LayerNorm(32, impl=impl).double(), nn.LayerNorm(32).double()
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.linspace(-1, 2, 32))
            m.bias.copy_(torch.linspace(0, 1, 32))
    y = ours(x)
    torch.testing.assert_close(y, theirs(x))
    xhat = (y - ours.bias) / ours.weight                   # each (b, t) row: mean 0, variance 1 over the 32
    torch.testing.assert_close(xhat.mean(-1), torch.zeros(3, t, dtype=D), atol=1e-7, rtol=0)
    torch.testing.assert_close(xhat.var(-1, unbiased=False), torch.ones(3, t, dtype=D), atol=1e-3, rtol=0)
    assert ours.weight.shape == (32,) and list(ours.state_dict()) == ["weight", "bias"]


def test_registry_layernorm_keeps_the_notes_group_norm_form():
    m = NORMS.get("layernorm")(8, dim=2)
    assert isinstance(m, GroupLayerNorm) and isinstance(m, nn.GroupNorm) and m.num_groups == 1
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(m(x), nn.GroupNorm(1, 8)(x))
    x2 = torch.randn(4, 8)
    torch.testing.assert_close(NORMS.get("layernorm")(8, dim=0)(x2), nn.LayerNorm(8)(x2))


def test_statistics_are_per_sample_and_group_and_the_same_in_eval():
    torch.manual_seed(0)
    m = GroupNorm(2, 4, eps=0.0 + 1e-12).double()
    x = torch.randn(3, 4, 5, 5, dtype=D) * torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1) + 5
    y = m(x).view(3, 2, -1)
    torch.testing.assert_close(y.mean(dim=2), torch.zeros(3, 2, dtype=D), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(dim=2, unbiased=False), torch.ones(3, 2, dtype=D), atol=1e-8, rtol=0)
    # a sample's output does not depend on the rest of the batch, and eval mode is the same
    torch.testing.assert_close(m(x[:1]), m(x)[:1])
    assert torch.equal(m.eval()(x), m.train()(x))


def test_fast_equals_reference_in_float64():
    torch.manual_seed(0)
    fast, ref = GroupNorm(3, 6).double(), GroupNorm(3, 6, impl="reference").double()
    with torch.no_grad():
        for m in (fast, ref):
            m.weight.copy_(torch.linspace(-1, 2, 6))
    x = torch.randn(4, 6, 3, 3, dtype=D, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(4, 6, 3, 3, dtype=D)
    fast(x).backward(g)
    ref(x2).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours, theirs", [
    (GroupNorm, nn.GroupNorm), (LayerNorm, nn.LayerNorm), (InstanceNorm1d, nn.InstanceNorm1d),
    (InstanceNorm2d, nn.InstanceNorm2d), (InstanceNorm3d, nn.InstanceNorm3d)])
def test_signature_and_base_class_are_pytorchs(ours, theirs):
    assert issubclass(ours, theirs)
    po, pt = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    for name, p in pt.items():      # every PyTorch argument, same kind (positional / keyword-only) and default
        assert name in po and po[name].kind == p.kind and po[name].default == p.default, name
    extra = [n for n in po if n not in pt]
    assert extra == ["impl", "check_finite"] and all(po[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extra)


def test_affine_false_has_no_keys_and_state_dicts_load_both_ways():
    assert GroupNorm(2, 4, affine=False).state_dict() == {}
    assert LayerNorm(4, elementwise_affine=False).state_dict() == {}
    assert InstanceNorm2d(4).state_dict() == {}
    assert list(GroupNorm(2, 4, bias=False).state_dict()) == ["weight"]
    torch.manual_seed(0)
    for ours, theirs in [(GroupNorm(2, 4), nn.GroupNorm(2, 4)), (LayerNorm([2, 3]), nn.LayerNorm([2, 3])),
                         (InstanceNorm1d(4, affine=True, track_running_stats=True),
                          nn.InstanceNorm1d(4, affine=True, track_running_stats=True))]:
        with torch.no_grad():
            for t in theirs.state_dict().values():
                t.copy_(torch.rand_like(t.float()).to(t.dtype) + 1)
        ours.load_state_dict(theirs.state_dict())
        fresh = type(theirs)(*([2, 4] if isinstance(theirs, nn.GroupNorm) else [ours.normalized_shape]
                               if isinstance(theirs, nn.LayerNorm) else [4]),
                             **({} if not isinstance(theirs, nn.InstanceNorm1d) else
                                {"affine": True, "track_running_stats": True}))
        fresh.load_state_dict(ours.state_dict())
        for k, v in theirs.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v) and torch.equal(ours.state_dict()[k], v)


def test_reset_parameters_device_and_dtype():
    for m in (GroupNorm(2, 4, dtype=D), LayerNorm(4, dtype=D), InstanceNorm2d(4, affine=True, dtype=D,
                                                                              track_running_stats=True)):
        assert all(t.dtype == D for t in m.state_dict().values() if t.is_floating_point())
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(3.0)
        m.reset_parameters()
        assert torch.equal(m.weight, torch.ones(4, dtype=D)) and torch.equal(m.bias, torch.zeros(4, dtype=D))
    m = InstanceNorm2d(4, track_running_stats=True)
    m(torch.randn(2, 4, 3, 3) + 5)
    assert m.running_mean.abs().sum() > 0
    m.reset_running_stats()
    assert torch.equal(m.running_mean, torch.zeros(4)) and torch.equal(m.running_var, torch.ones(4))
    for m in (GroupNorm(2, 4, device="meta"), LayerNorm(4, device="meta"), InstanceNorm1d(4, affine=True,
                                                                                       device="meta")):
        assert all(p.device.type == "meta" for p in m.parameters())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, shape", [(InstanceNorm1d, (3, 3, 6)), (InstanceNorm2d, (3, 3, 4, 5)),
                                        (InstanceNorm3d, (3, 3, 2, 3, 4))])
@pytest.mark.parametrize("momentum", [0.3, None])
def test_instance_norm_running_stats_and_unbatched_as_pytorch(impl, cls, shape, momentum):
    torch.manual_seed(0)
    tcls = next(c for c in cls.__mro__ if c.__module__.startswith("torch.nn"))     # the class it subclasses
    assert tcls.__name__ == cls.__name__
    ours = cls(3, momentum=momentum, affine=True, track_running_stats=True, impl=impl).double()
    theirs = tcls(3, momentum=momentum, affine=True, track_running_stats=True).double()
    ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x = torch.randn(shape, dtype=D) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
        torch.testing.assert_close(ours(x[0]), theirs(x[0]))     # unbatched (C, *)
        for a, b in zip(ours.buffers(), theirs.buffers()):
            torch.testing.assert_close(a, b)
    ours.eval(), theirs.eval()
    x = torch.randn(shape, dtype=D)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours(x[0]), theirs(x[0]))


def test_bad_arguments_and_inputs_raise_pytorchs_errors_with_the_facts():
    with pytest.raises(ValueError, match=r"num_channels \(8\) must be divisible by num_groups \(3\)"):
        GroupNorm(3, 8)
    with pytest.raises(ValueError, match="num_groups and num_channels must be >= 1"):
        GroupNorm(0, 8)
    for make in (lambda: GroupNorm(2, 8, eps=-1), lambda: LayerNorm(8, eps=-1), lambda: InstanceNorm2d(8, eps=-1)):
        with pytest.raises(ValueError, match="eps must be >= 0"):
            make()
    GroupNorm(2, 8, eps=0)      # eps = 0 is allowed, as in PyTorch
    with pytest.raises(RuntimeError, match=r"GroupNorm\(2, 8.*impl='reference'.*weight of shape \[8\] and input "
                                           r"of shape \[2, 6, 3, 3\]"):
        GroupNorm(2, 8, impl="reference")(torch.randn(2, 6, 3, 3))
    with pytest.raises(RuntimeError, match=r"weight of shape \[8\] and input of shape \[2, 6, 3, 3\]"):
        GroupNorm(2, 8)(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r"expected 3D or 4D input \(got 2D input\)"):
        InstanceNorm2d(4)(torch.randn(4, 3))
    with pytest.raises(RuntimeError, match=r"normalized_shape=\[32\].*input of size\[3, 32, 7\]"):
        LayerNorm(32, impl="reference")(torch.randn(3, 32, 7))
    with pytest.raises(ValueError, match="impl must be"):
        LayerNorm(4, impl="slow")


@pytest.mark.parametrize("impl", IMPLS)
def test_finiteness_check_is_opt_in(impl):
    x = torch.tensor([[1.0, float("nan"), 0.0, 2.0]])
    for m in (GroupLayerNorm(4, impl=impl), LayerNorm(4, impl=impl)):
        assert torch.isnan(m(x)).all()               # default: no host synchronization, NaN flows on
        m.check_finite = True
        with pytest.raises(NonFiniteInputError, match="non-finite"):
            m(x)
    with pytest.raises(NonFiniteInputError, match=r"InstanceNorm1d"):
        InstanceNorm1d(4, impl=impl, check_finite=True)(x.view(1, 1, 4).expand(2, 4, 4))
    assert GroupNorm(1, 4, check_finite=True)(torch.randn(1, 4)).shape == (1, 4)


def _sync_free_cases():
    return [("GroupNorm", lambda i: GroupNorm(2, 4, impl=i), (2, 4, 3, 3)),
            ("GroupLayerNorm", lambda i: GroupLayerNorm(4, impl=i), (2, 4, 3)),
            ("LayerNorm", lambda i: LayerNorm(3, impl=i), (2, 5, 3)),
            ("InstanceNorm1d", lambda i: InstanceNorm1d(4, affine=True, impl=i), (2, 4, 5)),
            ("InstanceNorm2d", lambda i: InstanceNorm2d(4, affine=True, impl=i), (2, 4, 3, 3)),
            ("InstanceNorm3d_tracking", lambda i: InstanceNorm3d(4, track_running_stats=True, impl=i),
             (2, 4, 2, 2, 3))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(_sync_free_cases())))
def test_no_graph_breaks_export_fx_meta_and_vmap_train_and_eval(impl, case):
    """issue 15 item 6: no host synchronization in forward -- zero torch.compile graph breaks, torch.export
    (GroupNorm in eval failed), torch.fx symbolic tracing, the meta device and vmap, in training and eval."""
    _, make, shape = _sync_free_cases()[case]
    torch.manual_seed(0)
    x = torch.randn(shape)
    for train in (True, False):
        m = make(impl).train(train)
        explain = torch._dynamo.explain(m)(x)
        assert explain.graph_break_count == 0, explain.break_reasons
        assert explain.graph_count == 1
        ref = make(impl).train(train)
        exported = torch.export.export(ref, (x,))
        torch.testing.assert_close(exported.module()(x), make(impl).train(train)(x))
        traced = torch.fx.symbolic_trace(make(impl).train(train))
        torch.testing.assert_close(traced(x), make(impl).train(train)(x))
        meta = make(impl).to("meta").train(train)
        assert meta(x.to("meta")).shape == x.shape
        if not (train and getattr(m, "track_running_stats", False)):   # PyTorch refuses in-place stats too
            v = torch.func.vmap(make(impl).train(train))(x.unsqueeze(0).expand(2, *x.shape))
            torch.testing.assert_close(v[1], make(impl).train(train)(x))


# -- issue 15, faults found by the testers (I, L for group / layer / instance norm) ------------------------------
import copy  # noqa: E402

GN_FAMILY = {   # our layer for an impl, torch's twin, an input shape
    "GroupNorm": (lambda i: GroupNorm(2, 4, impl=i), lambda: nn.GroupNorm(2, 4), (4, 4, 3, 3)),
    "GroupLayerNorm": (lambda i: GroupLayerNorm(4, impl=i), lambda: nn.GroupNorm(1, 4), (4, 4, 5)),
    "LayerNorm": (lambda i: LayerNorm(3, impl=i), lambda: nn.LayerNorm(3), (4, 5, 3)),
    "LayerNorm2": (lambda i: LayerNorm([3, 3], impl=i), lambda: nn.LayerNorm([3, 3]), (4, 4, 3, 3)),
    "InstanceNorm1d": (lambda i: InstanceNorm1d(4, affine=True, impl=i), lambda: nn.InstanceNorm1d(4, affine=True),
                       (4, 4, 5)),
    "InstanceNorm2d": (lambda i: InstanceNorm2d(4, impl=i), lambda: nn.InstanceNorm2d(4), (4, 4, 3, 3)),
    "InstanceNorm2d_tracking": (lambda i: InstanceNorm2d(4, affine=True, track_running_stats=True, impl=i),
                                lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True), (4, 4, 3, 3)),
    "InstanceNorm3d_tracking": (lambda i: InstanceNorm3d(4, track_running_stats=True, impl=i),
                                lambda: nn.InstanceNorm3d(4, track_running_stats=True), (2, 4, 2, 3, 2)),
}


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(GN_FAMILY))
def test_bf16_input_with_float32_parameters_gives_torchs_dtype_issue15_I(name, impl, train, autocast):
    """Issue 15 (testers, I): GroupNorm(2, 4, impl='reference')(bf16 input) returned float32; torch returns
    bf16 (BN, GN, LN, IN alike, with or without autocast). Right value: torch's twin's dtype, values within
    bf16 rounding, the input gradient in the input's dtype, running estimates in float32 as torch's."""
    make, twin_make, shape = GN_FAMILY[name]
    torch.manual_seed(0)
    ours, twin = make(impl).train(train), twin_make().train(train)
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    twin.load_state_dict(ours.state_dict())
    x = (torch.randn(shape) * 2 + 1).bfloat16()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ya, yb = ours(xa), twin(xb)
    assert ya.dtype == yb.dtype == torch.bfloat16
    torch.testing.assert_close(ya.float(), yb.float(), rtol=0.02, atol=0.05)
    ya.float().square().sum().backward(), yb.float().square().sum().backward()
    assert xa.grad.dtype == xb.grad.dtype == torch.bfloat16
    for k, v in twin.state_dict().items():
        assert ours.state_dict()[k].dtype == v.dtype
        torch.testing.assert_close(ours.state_dict()[k].float(), v.float(), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(GN_FAMILY))
def test_fx_trace_is_one_leaf_and_train_eval_switchable_issue15_L(name, impl):
    """Issue 15 (testers, L): InstanceNorm2d(track_running_stats=True) was traced into F.instance_norm with
    train/eval fixed at trace time, so gm.eval() still used batch statistics. Right value: one call_module
    node per layer (as torch's own norm layers), gm.eval()(x) == layer.eval()(x)."""
    make, _, shape = GN_FAMILY[name]
    torch.manual_seed(0)
    layer = make(impl)
    for _ in range(3):
        layer(torch.randn(shape) * 2 + 1)
    twin = copy.deepcopy(layer)
    gm = torch.fx.symbolic_trace(nn.Sequential(layer))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    x = torch.randn(shape) * 2 + 1
    torch.testing.assert_close(gm(x), twin(x))
    gm.eval()
    torch.testing.assert_close(gm(x), twin.eval()(x))
    if getattr(layer, "track_running_stats", False):       # the eval output really uses the running estimates
        assert not torch.allclose(gm(x), copy.deepcopy(twin).train()(x))
    gm.train()
    torch.testing.assert_close(gm(x), twin.train()(x))
    for k, v in twin.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[k], v)
