"""Folding and checkpointing side by side with PyTorch's own tools, on PyTorch's batch-norm sample configs
(``common_modules.module_db``): ``fold_batchnorm`` against ``torch.fx.experimental.optimization.fuse`` and the
unfolded model; ``checkpoint_sequential`` against ``torch.utils.checkpoint.checkpoint_sequential`` and plain
autograd (float64, CPU)."""
import copy

import pytest
import torch
import torch.utils.checkpoint as tuc
from torch import nn
from torch.fx.experimental.optimization import fuse as torch_fuse
from torch.testing._internal.common_modules import module_db

from traintricks.memory import checkpoint_sequential
from traintricks.nn import fold_batchnorm

_LAYER = {nn.BatchNorm1d: {2: lambda c: nn.Linear(3, c), 3: lambda c: nn.Conv1d(3, c, 3, padding=1)},
          nn.BatchNorm2d: {4: lambda c: nn.Conv2d(3, c, 3, padding=2, dilation=2)},
          nn.BatchNorm3d: {5: lambda c: nn.Conv3d(3, c, 1, bias=False)}}


def _samples():
    out = []
    for info in module_db:
        if info.module_cls not in _LAYER:
            continue
        for i, s in enumerate(info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=False,
                                                      training=True)):
            shape = tuple(s.forward_input.args[0].shape)
            if shape[0] == 0:
                continue                                   # empty batch: nothing to train the statistics on
            out.append(pytest.param(info.module_cls, s.constructor_input.args, s.constructor_input.kwargs, shape,
                                    id=f"{info.module_cls.__name__}-{i}"))
    return out


SAMPLES = _samples()


def _model(cls, args, kwargs, shape):
    """PyTorch's norm sample after a layer of matching dims, and that layer's input shape."""
    torch.manual_seed(0)
    bn = cls(*args, **kwargs)
    layer = _LAYER[cls][len(shape)](bn.num_features)
    return nn.Sequential(layer, bn, nn.Tanh()).double(), (shape[0], 3, *shape[2:])


@pytest.mark.parametrize("cls, args, kwargs, shape", SAMPLES)
def test_fold_matches_the_model_and_torch_fx_fuse(cls, args, kwargs, shape):
    model, in_shape = _model(cls, args, kwargs, shape)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(in_shape, generator=g, dtype=torch.float64) * 2 + 1)
    model.eval()
    x = torch.randn(in_shape, generator=g, dtype=torch.float64)
    if model[1].track_running_stats:
        folded, report = fold_batchnorm(model, return_report=True, example_inputs=x)
        assert report.folded == [("0", "1")] and report.notes == []
    else:                                                 # batch statistics at inference: left, reported
        with pytest.warns(UserWarning, match="no running statistics"):
            folded, report = fold_batchnorm(model, return_report=True)
        assert report.folded == [] and isinstance(folded[1], cls)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-10)
    if model[1].weight is not None and model[1].bias is not None:   # torch's fuser needs both (TypeError else)
        theirs = torch_fuse(copy.deepcopy(model))
        torch.testing.assert_close(folded(x), theirs(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls, args, kwargs, shape", SAMPLES)
def test_checkpoint_sequential_matches_plain_and_torch_checkpoint(cls, args, kwargs, shape):
    model, in_shape = _model(cls, args, kwargs, shape)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(in_shape, generator=g, dtype=torch.float64) * 2 + 1

    def run(m, fn):
        x = x0.clone().requires_grad_()
        y = fn(m, x)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        (y * w).sum().backward()
        return x.grad, [p.grad for p in m.parameters()], [b.clone() for b in m.buffers()]
    plain = run(copy.deepcopy(model), lambda m, x: m(x))
    ours = run(copy.deepcopy(model), lambda m, x: checkpoint_sequential(m, 2, x))
    theirs = run(copy.deepcopy(model), lambda m, x: tuc.checkpoint_sequential(m, 2, x, use_reentrant=False))
    for got in (ours, theirs):                            # gradients: the same as plain autograd
        torch.testing.assert_close(got[0], plain[0], rtol=1e-10, atol=1e-12)
        for a, b in zip(got[1], plain[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(ours[2], plain[2]):                   # buffers: updated once, as plain autograd
        torch.testing.assert_close(a, b, rtol=0, atol=0)
