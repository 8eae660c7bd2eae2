"""The regularizer surgeries side by side with PyTorch, on PyTorch's own Linear and Conv2d sample configs and inputs
(``common_modules.module_db``), float64, CPU: dropout added before a layer by ``add_dropout`` is ``nn.Dropout``
followed by the layer (same mask under the same seed, same gradients); a layer given DropConnect by
``add_dropconnect`` keeps torch's ``state_dict`` both ways, its eval outputs and gradients; noise and stochastic
depth are the identity in eval mode."""
import copy

import pytest
import torch
from torch import nn
from torch.testing._internal.common_modules import module_db

from traintricks.surgery import add_dropconnect, add_dropout, add_noise, add_stochastic_depth


def _samples():
    out = []
    for info in module_db:
        if info.module_cls not in (nn.Linear, nn.Conv2d):
            continue
        for i, s in enumerate(info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                                      training=True)):
            x = s.forward_input.args[0] if s.forward_input.args else s.forward_input.kwargs.get("input")
            if not isinstance(x, torch.Tensor) or x.numel() == 0:
                continue                                   # an empty input: nothing to drop
            out.append(pytest.param(info.module_cls, s.constructor_input.args, s.constructor_input.kwargs, x,
                                    id=f"{info.module_cls.__name__}-{i}"))
    return out


SAMPLES = _samples()


def _layer(cls, args, kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).double()


@pytest.mark.parametrize("cls, args, kwargs, x", SAMPLES)
def test_dropout_before_a_layer_is_torch_dropout_then_the_layer(cls, args, kwargs, x):
    ours = _layer(cls, args, kwargs)
    ref = nn.Sequential(nn.Dropout(0.4), copy.deepcopy(ours))
    add_dropout(ours, 0.4, before=cls)
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    torch.manual_seed(1)
    ya = ours.train()(xa)
    torch.manual_seed(1)
    yb = ref.train()(xb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.weight.grad, ref[1].weight.grad, rtol=0, atol=0)
    assert torch.equal(ours.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("cls, args, kwargs, x", SAMPLES)
def test_dropconnect_keeps_torch_state_dict_and_eval_outputs_and_gradients(cls, args, kwargs, x):
    ours = _layer(cls, args, kwargs)
    ref = copy.deepcopy(ours)
    add_dropconnect(ours, 0.3, where=cls)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = ours.eval()(xa), ref.eval()(xb)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("cls, args, kwargs, x", SAMPLES)
def test_noise_and_stochastic_depth_are_the_identity_in_eval(cls, args, kwargs, x):
    layer = _layer(cls, args, kwargs)
    ref = copy.deepcopy(layer)
    add_noise(layer, 0.5, after=cls)
    assert torch.equal(layer.eval()(x), ref.eval()(x))

    class Residual(nn.Module):                # x + f(x) when the layer keeps the shape, else 2 * f(x) + f(x)
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, z):
            return z + self.f(z)

    out = ref(x)
    if out.shape == x.shape:
        block, plain = Residual(copy.deepcopy(ref)), Residual(copy.deepcopy(ref))
        add_stochastic_depth(block, 0.5)
        assert torch.equal(block.eval()(x), plain.eval()(x))
