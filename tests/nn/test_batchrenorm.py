import pytest
import torch
from torch import nn

from traintricks.nn import (BatchNorm1d, BatchNorm2d, BatchRenorm1d, BatchRenorm2d, BatchRenormFunction,
                            FastBatchRenormFunction, fold_batchnorm)

IMPLS = ["fast", "reference"]


def _active(cls, c, impl, **kw):
    """A batch renorm whose limits are at their final values from step 0, with running estimates far
    enough from a standard-normal batch's statistics that some r and d are clipped and some are not."""
    m = cls(c, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0, impl=impl, **kw)
    with torch.no_grad():
        m.running_mean.copy_(torch.linspace(-3, 3, c))
        m.running_var.copy_(torch.linspace(0.05, 4, c))
    return m


def test_gradcheck_where_r_and_d_are_clipped():
    # Where the clips are active, r and d are locally constant, so the true Jacobian (what gradcheck
    # measures by finite differences) equals the backward that treats them as constants.
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rm = torch.tensor([10.0, -10.0, 10.0], dtype=torch.float64)
    rv = torch.full((3,), 100.0, dtype=torch.float64)
    for fn in (BatchRenormFunction, FastBatchRenormFunction):
        assert torch.autograd.gradcheck(
            lambda a, c, d: fn.apply(a, c, d, rm.clone(), rv.clone(), 1.5, 0.5, 1e-5)[0], (x, g, b))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_module_gradcheck_with_rmax_1_dmax_0_train_and_eval(impl, train):
    torch.manual_seed(0)
    m = BatchRenorm2d(3, rmax=1.0, dmax=0.0, impl=impl).double().train(train)
    x = torch.randn(5, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: m(a), (x,))


@pytest.mark.parametrize("impl", IMPLS)
def test_r_and_d_get_no_gradient(impl):
    """Away from the clips the backward must equal autograd through the formula with r, d detached."""
    torch.manual_seed(0)
    m = _active(BatchRenorm2d, 4, impl, rmax=100.0, dmax=100.0).double()
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    x = (torch.randn(8, 4, 3, 3, dtype=torch.float64) * 1.5 + 0.5).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    (m(x) * w).sum().backward()
    mu, var = x2.mean(dim=(0, 2, 3)), x2.var(dim=(0, 2, 3), unbiased=False)
    sig_b, sig = (var + m.eps).sqrt(), (rv + m.eps).sqrt()
    r, d = (sig_b / sig).detach(), ((mu - rm) / sig).detach()
    xhat = (x2 - mu.view(1, -1, 1, 1)) / sig_b.view(1, -1, 1, 1)
    gamma, beta = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
    y = gamma.view(1, -1, 1, 1) * (xhat * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)) + beta.view(1, -1, 1, 1)
    (y * w).sum().backward()
    assert (r - 1).abs().min() > 0.05 and d.abs().min() > 0.05   # the correction is really in play
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(m.weight.grad, gamma.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(m.bias.grad, beta.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cls, bn_cls, shape", [(BatchRenorm2d, BatchNorm2d, (8, 5, 4, 3)),
                                                (BatchRenorm1d, BatchNorm1d, (10, 5))])
def test_equals_batchnorm_exactly_with_rmax_1_dmax_0(impl, cls, bn_cls, shape):
    torch.manual_seed(0)
    brn, bn = cls(5, rmax=1.0, dmax=0.0, alpha=0.8, impl=impl), bn_cls(5, alpha=0.8, impl=impl)
    for _ in range(3):
        x = torch.randn(*shape) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = brn(xa), bn(xb)
        assert torch.equal(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(brn.running_mean, bn.running_mean) and torch.equal(brn.running_var, bn.running_var)
    assert torch.equal(brn.weight.grad, bn.weight.grad)


def test_fast_equals_reference_and_matches_the_paper_formula():
    torch.manual_seed(0)
    fast, ref = _active(BatchRenorm2d, 6, "fast").double(), _active(BatchRenorm2d, 6, "reference").double()
    for step in range(3):
        x = torch.randn(4, 6, 3, 3, dtype=torch.float64) * 1.3 + 0.2
        rm, rv = ref.running_mean.clone(), ref.running_var.clone()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
        # the paper's Algorithm 1, written out
        mu, sb = x.mean(dim=(0, 2, 3)), (x.var(dim=(0, 2, 3), unbiased=False) + 1e-5).sqrt()
        s = (rv + 1e-5).sqrt()
        r, d = (sb / s).clamp(1 / 3, 3), ((mu - rm) / s).clamp(-5, 5)
        expect = ((x - mu.view(1, -1, 1, 1)) / sb.view(1, -1, 1, 1) * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1))
        torch.testing.assert_close(yb, expect, rtol=1e-10, atol=1e-10)   # gamma = 1, beta = 0
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(fast.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-9, atol=1e-10)


def test_bf16_inputs_take_the_float32_statistics_path():
    torch.manual_seed(0)
    fast, ref = _active(BatchRenorm2d, 4, "fast"), _active(BatchRenorm2d, 4, "reference")
    x = torch.randn(8, 4, 5, 5) * 1.5
    y = fast(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref(x.bfloat16().float()), rtol=0.02, atol=0.05)
    torch.testing.assert_close(fast.running_mean, ref.running_mean, rtol=1e-3, atol=1e-3)


def test_limits_ramp_with_the_step_count_and_live_in_state_dict():
    m = BatchRenorm2d(2, rmax=3.0, dmax=5.0, warmup_steps=10, r_ramp_steps=20, d_ramp_steps=10)
    assert m.limits(0) == (1.0, 0.0) and m.limits(10) == (1.0, 0.0)
    assert m.limits(20) == pytest.approx((2.0, 5.0))
    assert m.limits(30) == pytest.approx((3.0, 5.0)) and m.limits(10_000) == pytest.approx((3.0, 5.0))
    for _ in range(15):
        m(torch.randn(4, 2, 3, 3))
    assert int(m.num_batches_tracked) == 15 and m.limits() == pytest.approx((1.5, 2.5))
    other = BatchRenorm2d(2, rmax=3.0, dmax=5.0, warmup_steps=10, r_ramp_steps=20, d_ramp_steps=10)
    other.load_state_dict(m.state_dict())
    assert other.limits() == m.limits()
    assert torch.equal(other.running_var, m.running_var)


def test_inference_uses_running_estimates_and_training_output_matches_it_without_clipping():
    """The paper's point: with r, d unclipped, the training output equals the inference output."""
    torch.manual_seed(0)
    m = _active(BatchRenorm2d, 3, "fast", rmax=1e3, dmax=1e3).double()
    x = torch.randn(16, 3, 4, 4, dtype=torch.float64) * 2 + 1
    m_eval = _active(BatchRenorm2d, 3, "fast", rmax=1e3, dmax=1e3).double().eval()
    torch.testing.assert_close(m(x), m_eval(x), rtol=1e-9, atol=1e-9)


def test_small_batches_and_2d_inputs_work():
    m = _active(BatchRenorm1d, 3, "fast")
    assert m(torch.randn(2, 3)).shape == (2, 3)
    m2 = _active(BatchRenorm2d, 3, "fast")
    assert m2(torch.randn(2, 3, 1, 2)).shape == (2, 3, 1, 2)


def test_channels_last_stays_channels_last_and_matches():
    torch.manual_seed(0)
    a, b = _active(BatchRenorm2d, 8, "fast"), _active(BatchRenorm2d, 8, "reference")
    x = torch.randn(4, 8, 5, 5)
    y = a(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, b(x), rtol=1e-5, atol=1e-5)


def test_invalid_arguments_and_inputs():
    with pytest.raises(ValueError, match="rmax"):
        BatchRenorm2d(3, rmax=0.5)
    with pytest.raises(ValueError, match="dmax"):
        BatchRenorm2d(3, dmax=-1)
    with pytest.raises(ValueError, match="warmup_steps"):
        BatchRenorm2d(3, warmup_steps=-1)
    m = BatchRenorm2d(3)
    with pytest.raises(ValueError, match=r"BatchRenorm2d\(3\): input has 2 channels"):
        m(torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        BatchRenorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="non-finite"):
        BatchRenorm2d(3, check_finite=True)(torch.full((2, 3, 2, 2), float("inf")))
    with pytest.raises(ValueError, match="track_running_stats"):
        BatchRenorm2d(3, track_running_stats=False)


def test_folds_like_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), _active(BatchRenorm2d, 4, "fast"), nn.ReLU())
    for _ in range(3):
        model(torch.randn(8, 2, 6, 6))
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(3, 2, 6, 6)
    assert folded.folded_batchnorms == 1
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_cumulative_average_and_tensor_limits_without_host_reads(impl):
    """momentum=None is the cumulative average (as batch norm); the ramped limits are computed as tensors and
    equal the host-side limits()."""
    torch.manual_seed(0)
    m = BatchRenorm2d(3, momentum=None, warmup_steps=1, r_ramp_steps=2, d_ramp_steps=4, impl=impl).double()
    xs = [torch.randn(6, 3, 2, 2, dtype=torch.float64) * (i + 1) for i in range(4)]
    for step, x in enumerate(xs):
        rmax, dmax = m.limits_tensor()
        assert (float(rmax), float(dmax)) == pytest.approx(m.limits(step))
        m(x)
    torch.testing.assert_close(m.running_mean, torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0))
    torch.testing.assert_close(m.running_var, torch.stack([x.var(dim=(0, 2, 3)) for x in xs]).mean(0))


def test_not_affine_and_torch_signature():
    torch.manual_seed(0)
    m = _active(BatchRenorm2d, 3, "fast", affine=False)
    r = _active(BatchRenorm2d, 3, "reference", affine=False)
    assert list(m.state_dict()) == list(nn.BatchNorm2d(3, affine=False).state_dict())
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(m(x), r(x))
    assert BatchRenorm2d(3, 1e-3, 0.2).momentum == 0.2 and BatchRenorm2d(3, 1e-3, 0.2).eps == 1e-3
