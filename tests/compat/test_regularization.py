"""Our Dropout against PyTorch's dropouts on PyTorch's own sample inputs, float64, CPU.

``module_db`` has no Dropout entries in this PyTorch, so the samples are ``op_db``'s for ``nn.functional.dropout``,
``dropout1d``-style (3-D), ``dropout2d`` and ``dropout3d`` (``sample_inputs_dropout``: shapes, p in {0, 0.5, 1},
training on/off), run through ``nn.Dropout``/``Dropout1d/2d/3d`` and our ``Dropout`` (``mode="channel"`` for the
1d/2d/3d ones). Eval mode: identity; p = 0 and p = 1 in training: identity and zeros, gradients too; other p in
training: the same mask as PyTorch's under the same seed on the CPU -- for both implementations (the default,
PyTorch's kernels, and ``impl="reference"``, the formula). The 1d/2d/3d samples run through our ``Dropout1d/2d/3d``
(unbatched inputs included) and, where batched, also through ``Dropout(mode="channel")``. Plus seeded statistical
tests of the mask rate and the scale.
"""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from torch.testing._internal.common_methods_invocations import sample_inputs_dropout

from traintricks.nn import Dropout, Dropout1d, Dropout2d, Dropout3d

KINDS = {  # torch module, our twin, input ranks Dropout(mode="channel") also takes (batched), op_db's valid ranks
    "Dropout": (nn.Dropout, Dropout, None, None),
    "Dropout1d": (nn.Dropout1d, Dropout1d, (3,), (2, 3)),
    "Dropout2d": (nn.Dropout2d, Dropout2d, (4,), (3, 4)),
    "Dropout3d": (nn.Dropout3d, Dropout3d, (5,), (4, 5)),
}


def _samples(kind):
    torch.manual_seed(0)
    valid = KINDS[kind][3]
    fn = partial(sample_inputs_dropout, valid_input_dim=valid) if valid else sample_inputs_dropout
    return list(fn(None, "cpu", torch.float64, True))


CASES = [pytest.param(kind, i, id=f"{kind}-{tuple(s.input.shape)}-p{s.kwargs.get('p', 0.5)}-"
                                     f"{'train' if s.kwargs.get('training', True) else 'eval'}")
         for kind in KINDS for i, s in enumerate(_samples(kind))]


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind,index", CASES)
def test_dropout_samples_as_torch(kind, index, impl):
    s = _samples(kind)[index]
    torch_cls, ours_cls, batched, _ = KINDS[kind]
    x = s.input
    p, training = s.kwargs.get("p", 0.5), s.kwargs.get("training", True)
    ours_mods = [ours_cls(p, impl=impl)]
    if batched is not None and x.ndim in batched:
        ours_mods.append(Dropout(p, mode="channel", impl=impl))
    for ours_mod in ours_mods:
        assert isinstance(ours_mod, torch_cls if type(ours_mod) is ours_cls else nn.Dropout)    # torch's class
        ref_mod, ours_mod = torch_cls(p).train(training), ours_mod.train(training)
        xr, xo = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        torch.manual_seed(7)
        ref = ref_mod(xr)
        torch.manual_seed(7)
        out = ours_mod(xo)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        if not training or p == 0.0:
            assert torch.equal(out, x)
        if training and p == 1.0:
            assert torch.equal(out, torch.zeros_like(x))
        torch.testing.assert_close(out, ref, rtol=0, atol=0)                # the same mask under the same seed
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(out, xo, g)[0], torch.autograd.grad(ref, xr, g)[0],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("mode", ["element", "channel"])
def test_train_mode_mask_rate_and_scale(p, mode):
    torch.manual_seed(11)
    x = torch.ones(64, 256, 4, 4, dtype=torch.float64)
    y = Dropout(p, mode=mode)(x)
    dropped = (y == 0)
    n = dropped.numel() if mode == "element" else 64 * 256          # independent draws
    rate = dropped.double().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5               # 5 standard deviations
    torch.testing.assert_close(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - p)), rtol=0, atol=1e-15)
    if mode == "channel":
        per = y.flatten(2)
        assert ((per == 0).all(-1) | (per != 0).all(-1)).all()       # whole channels
    assert abs(y.mean().item() - 1.0) < 5 * (p / ((1 - p) * n)) ** 0.5  # unbiased: E[y] = x
