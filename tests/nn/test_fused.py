import pytest
import torch
from torch import nn

from traintricks.nn import BatchNorm2d, BatchNormAct1d, BatchNormAct2d, BatchNormActFunction, fold_batchnorm

ACTS = {"relu": lambda: nn.ReLU(), "leaky_relu": lambda: nn.LeakyReLU(0.1), "gelu": lambda: nn.GELU()}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_backward_passes_gradcheck(act, channels_last):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, d: BatchNormActFunction.apply(a, c, d, 1e-5, act, 0.1)[0], (x, g, b))


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_pytorch_batchnorm_then_activation(act, impl, channels_last):
    torch.manual_seed(0)
    fused = BatchNormAct2d(6, activation=act, negative_slope=0.1, alpha=0.9, impl=impl)
    pair = nn.Sequential(nn.BatchNorm2d(6, momentum=0.1), ACTS[act]())
    with torch.no_grad():
        for w in (fused.weight, pair[0].weight):
            w.copy_(torch.linspace(-1, 2, 6))
    for _ in range(2):
        x = torch.randn(4, 6, 5, 5) * 2 + 0.3
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fused(xa), pair(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        if channels_last:
            assert ya.is_contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, pair[0].weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.running_var, pair[0].running_var)
    fused.eval(), pair.eval()
    x = torch.randn(3, 6, 5, 5)
    torch.testing.assert_close(fused(x), pair(x), rtol=1e-5, atol=1e-5)


def test_saves_less_for_backward_with_gelu():
    """GELU's input is recomputed, not stored: the fused op saves one activation-sized tensor less."""
    def saved_bytes(module, x):
        total = []

        def pack(t):
            total.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x.requires_grad_())
        return sum(total)
    x = torch.randn(8, 16, 8, 8)
    fused = saved_bytes(BatchNormAct2d(16, activation="gelu"), x.clone())
    pair = saved_bytes(nn.Sequential(nn.BatchNorm2d(16), nn.GELU()), x.clone())
    assert pair - fused >= x.numel() * 4


def test_one_dimensional_inputs_and_bad_arguments():
    m = BatchNormAct1d(5, activation="leaky_relu", negative_slope=0.2)
    x = torch.randn(7, 5)
    torch.testing.assert_close(m(x), nn.functional.leaky_relu(nn.BatchNorm1d(5)(x), 0.2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="activation must be one of"):
        BatchNormAct2d(5, activation="silu")
    with pytest.raises(TypeError, match="keyword-only"):       # batch norm's positional arguments come first
        BatchNormAct2d(5, "gelu")
    with pytest.raises(ValueError, match="non-finite"):
        BatchNormAct2d(2, check_finite=True)(torch.full((2, 2, 2, 2), float("nan")))


def test_fold_keeps_the_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), BatchNormAct2d(4, activation="gelu"), nn.Conv2d(4, 3, 1), BatchNorm2d(3))
    for _ in range(3):
        model(torch.randn(8, 2, 6, 6))
    model.eval()
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms == 2 and isinstance(folded[1], nn.GELU)
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("kwargs", [{"affine": False}, {"track_running_stats": False}, {"momentum": None},
                                    {"bias": False}])
def test_torch_batchnorm_options_then_activation(act, kwargs):
    """PyTorch's batch-norm arguments mean what they mean for nn.BatchNorm2d, with the activation after."""
    torch.manual_seed(0)
    fused = BatchNormAct2d(4, activation=act, negative_slope=0.1, **kwargs).double()
    pair = nn.Sequential(nn.BatchNorm2d(4, **kwargs), ACTS[act]()).double()
    assert list(fused.state_dict()) == list(pair[0].state_dict())
    for _ in range(2):
        x = torch.randn(3, 4, 2, 2, dtype=torch.float64) * 2
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fused(xa), pair(xb)
        torch.testing.assert_close(ya, yb)
        ya.sum().backward(), yb.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
    for k, v in pair[0].state_dict().items():
        torch.testing.assert_close(fused.state_dict()[k], v)
    fused.eval(), pair.eval()
    torch.testing.assert_close(fused(x), pair(x))


def test_sync_batchnorm_syncs_fused_and_refuses_what_it_cannot_sync():
    from traintricks.memory import InPlaceABN
    from traintricks.nn import BatchRenorm2d
    from traintricks.parallel import sync_batchnorm_
    model = nn.Sequential(BatchNorm2d(3), BatchNormAct2d(3))
    assert sync_batchnorm_(model) == 2 and model[0].sync and model[1].sync
    for bad in (BatchRenorm2d(3), InPlaceABN(3)):
        model = nn.Sequential(BatchNorm2d(3), bad)
        with pytest.raises(ValueError, match=type(bad).__name__):
            sync_batchnorm_(model)
        assert not model[0].sync                      # nothing changed
    # without a process group the synchronized layer is plain batch norm
    m = BatchNormAct2d(3)
    sync_batchnorm_(m)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(m(x), nn.functional.relu(nn.BatchNorm2d(3)(x)))
