import pytest
import torch
from torch import nn

from traintricks.nn import BatchNorm1d, BatchNorm2d, BatchNormFunction, fold_batchnorm


@pytest.mark.parametrize("shape", [(6, 3, 4, 5), (7, 4), (5, 3, 6)])
def test_hand_written_backward_passes_gradcheck(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: BatchNormFunction.apply(a, b, c, 1e-5)[0], (x, gamma, beta))


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("train", [True, False])
def test_module_gradcheck_train_and_eval(train, impl):
    torch.manual_seed(0)
    bn = BatchNorm2d(3, impl=impl).double()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.train(train)
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: bn(a), (x,))


@pytest.mark.parametrize("cls, ref, shape", [(BatchNorm2d, nn.BatchNorm2d, (8, 5, 7, 6)),
                                             (BatchNorm1d, nn.BatchNorm1d, (16, 5)),
                                             (BatchNorm1d, nn.BatchNorm1d, (8, 5, 9))])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_matches_pytorch_outputs_grads_and_running_stats(cls, ref, shape, channels_last, impl):
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last is for 4-D inputs")
    torch.manual_seed(0)
    ours, theirs = cls(5, alpha=0.9, impl=impl), ref(5, momentum=0.1)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.linspace(0.5, 2, 5))
            m.bias.copy_(torch.linspace(-1, 1, 5))
    for step in range(3):
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
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_training_normalizes_each_channel_over_batch_and_space():
    bn = BatchNorm2d(4, eps=1e-5)
    x = torch.randn(16, 4, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 5, 0.1, 3]).view(1, 4, 1, 1) + 7
    y = bn.double()(x)
    var_b = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), var_b / (var_b + 1e-5), atol=1e-12, rtol=0)


def test_alpha_momentum_mapping_and_validation():
    assert BatchNorm2d(3, alpha=0.99).momentum == pytest.approx(0.01)
    assert BatchNorm2d(3, momentum=0.2).momentum == 0.2 and BatchNorm2d(3).momentum == 0.1   # torch's default
    assert BatchNorm2d(3, momentum=0.2, alpha=0.8).momentum == pytest.approx(0.2)
    assert not hasattr(BatchNorm2d(3), "alpha")          # alpha is a constructor alternative, not an attribute
    with pytest.raises(ValueError, match="disagree"):
        BatchNorm2d(3, alpha=0.9, momentum=0.5)
    with pytest.raises(ValueError, match="alpha"):
        BatchNorm2d(3, alpha=1.0)
    with pytest.raises(ValueError, match="impl"):
        BatchNorm2d(3, impl="cuda")


def test_fast_path_equals_reference_in_float64():
    torch.manual_seed(0)
    fast, ref = BatchNorm2d(4, alpha=0.7).double(), BatchNorm2d(4, alpha=0.7, impl="reference").double()
    for _ in range(3):
        x = (torch.randn(6, 4, 3, 5, dtype=torch.float64) * 2 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        g = torch.randn(6, 4, 3, 5, dtype=torch.float64)
        fast(x).backward(g)
        ref(x2).backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-12)


def test_bf16_autocast_inputs_work():
    bn = BatchNorm2d(4)
    x = torch.randn(8, 4, 5, 5).bfloat16().requires_grad_()
    y = bn(x)
    assert y.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    y.float().sum().backward()
    assert x.grad is not None and bn.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bad_inputs_name_the_layer_and_problem(impl):
    bn = BatchNorm2d(3, impl=impl)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): input has 4 channels"):
        bn(torch.randn(2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="input has 4 channels"):     # torch's kernels raise RuntimeError
        bn(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        BatchNorm1d(3, impl=impl)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="non-finite"):                 # opt-in: a host synchronization
        BatchNorm2d(3, impl=impl, check_finite=True)(torch.full((2, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        bn(torch.randn(2, 3))
    bn.eval()
    assert bn(torch.randn(1, 3, 2, 2)).shape == (1, 3, 2, 2)     # a single example is fine at inference


def test_state_dict_round_trip_and_fold():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), BatchNorm2d(4, alpha=0.5), nn.ReLU())
    for _ in range(3):
        model(torch.randn(8, 2, 6, 6))
    copy = nn.Sequential(nn.Conv2d(2, 4, 3), BatchNorm2d(4, alpha=0.5), nn.ReLU())
    copy.load_state_dict(model.state_dict())
    model.eval(), copy.eval()
    x = torch.randn(3, 2, 6, 6)
    assert torch.equal(model(x), copy(x))
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms == 1
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
