import pytest
import torch
from torch import nn

from traintricks.nn import GroupNorm, GroupNormFunction, InstanceNorm2d, LayerNorm

IMPLS = ["fast", "reference"]


@pytest.mark.parametrize("shape, groups", [((4, 6, 3, 5), 3), ((5, 4), 2), ((3, 6, 7), 6), ((2, 4, 3, 3), 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_hand_written_backward_passes_gradcheck(shape, groups, channels_last):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        if x.ndim != 4:
            pytest.skip("channels_last is for 4-D inputs")
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: GroupNormFunction.apply(a, c, d, groups, 1e-5)[0], (x, g, b))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("make", [lambda i: GroupNorm(2, 4, impl=i), lambda i: InstanceNorm2d(4, affine=True, impl=i),
                                  lambda i: LayerNorm(4, impl=i)])
@pytest.mark.parametrize("train", [True, False])
def test_module_gradcheck_train_and_eval(impl, make, train):
    torch.manual_seed(0)
    m = make(impl).double().train(train)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: m(a), (x,))


def _native_pairs():
    return [
        (lambda i: GroupNorm(4, 8, impl=i), lambda: nn.GroupNorm(4, 8), (6, 8, 5, 5)),
        (lambda i: GroupNorm(4, 8, impl=i), lambda: nn.GroupNorm(4, 8), (6, 8, 9)),
        (lambda i: InstanceNorm2d(8, affine=True, impl=i), lambda: nn.InstanceNorm2d(8, affine=True), (6, 8, 5, 5)),
        (lambda i: InstanceNorm2d(8, impl=i), lambda: nn.InstanceNorm2d(8), (6, 8, 5, 5)),
        (lambda i: LayerNorm(8, impl=i), lambda: nn.GroupNorm(1, 8), (6, 8, 5, 5)),
        (lambda i: LayerNorm(8, impl=i), lambda: nn.LayerNorm(8), (6, 8)),
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
    if ours.affine:
        with torch.no_grad():
            for m in (ours, theirs):
                m.weight.copy_(torch.linspace(0.5, 2, 8))
                m.bias.copy_(torch.linspace(-1, 1, 8))
    x = torch.randn(*shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert ya.is_contiguous(memory_format=torch.channels_last)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    if ours.affine:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-4)


def test_statistics_are_per_sample_and_group_and_the_same_in_eval():
    torch.manual_seed(0)
    m = GroupNorm(2, 4, eps=0.0 + 1e-12).double()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1) + 5
    y = m(x).view(3, 2, -1)
    torch.testing.assert_close(y.mean(dim=2), torch.zeros(3, 2, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(dim=2, unbiased=False), torch.ones(3, 2, dtype=torch.float64), atol=1e-8, rtol=0)
    # a sample's output does not depend on the rest of the batch, and eval mode is the same
    torch.testing.assert_close(m(x[:1]), m(x)[:1])
    assert torch.equal(m.eval()(x), m.train()(x))


def test_fast_equals_reference_in_float64():
    torch.manual_seed(0)
    fast, ref = GroupNorm(3, 6).double(), GroupNorm(3, 6, impl="reference").double()
    with torch.no_grad():
        for m in (fast, ref):
            m.weight.copy_(torch.linspace(-1, 2, 6))
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    fast(x).backward(g)
    ref(x2).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-12)


def test_bad_arguments_and_inputs_name_the_layer():
    with pytest.raises(ValueError, match="not divisible"):
        GroupNorm(3, 8)
    with pytest.raises(ValueError, match="eps"):
        GroupNorm(2, 8, eps=0)
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 8.*input has 6 channels"):
        GroupNorm(2, 8)(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match=r"InstanceNorm2d.*\(N, C, H, W\)"):
        InstanceNorm2d(4)(torch.randn(2, 4, 3))
    for impl in IMPLS:
        with pytest.raises(ValueError, match="non-finite"):
            LayerNorm(4, impl=impl)(torch.tensor([[1.0, float("nan"), 0.0, 2.0]]))
    assert LayerNorm(4)(torch.randn(1, 4)).shape == (1, 4)     # a batch of one is fine: per-sample statistics
