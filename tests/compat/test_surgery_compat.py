"""Compatibility suite, norm surgery (issue 17): PyTorch's own batch-norm samples (``module_db`` entries
``nn.BatchNorm1d/2d/3d``, every constructor variant: eps, momentum None, affine=False, track_running_stats=False,
bias=False, empty batches), float64, CPU, train and eval, each layer inside a container:

- ``sync_batchnorm(model)`` (torch's layer -> ours with ``sync=True``, one process) vs the untouched torch layer:
  outputs, input and parameter gradients, buffers after the forward, ``state_dict`` keys and values;
- ``sync_batchnorm(model, torch_layers=True)`` vs ``nn.SyncBatchNorm.convert_sync_batchnorm``: the same module type,
  ``state_dict`` (keys, order, values) and outputs in eval;
- ``convert_norms(model, "batchnorm")`` vs the torch layer: the same outputs, gradients and buffers (BatchNorm3d:
  refused with the reason, the registry's batch norm has no 3-D form)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing._internal.common_modules import module_db

from traintricks.surgery import NothingToChangeError, convert_norms, sync_batchnorm

DTYPE = torch.float64
INFOS = [mi for mi in module_db if mi.module_cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)]


def _cases():
    cases = []
    for mi in INFOS:
        for training in (True, False):
            samples = mi.module_inputs_func(mi, device="cpu", dtype=DTYPE, requires_grad=True, training=training)
            for i, s in enumerate(samples):
                cases.append(pytest.param(mi, s, training,
                                          id=f"{mi.name}-{'train' if training else 'eval'}-{i}-{s.desc or 'default'}"))
    return cases


CASES = _cases()


def _pair(mi, sample, training):
    """The torch layer with a non-trivial state, in a container, and a deep copy of the container."""
    c = sample.constructor_input
    layer = mi.module_cls(*c.args, **c.kwargs).to(DTYPE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(layer.named_parameters()) + list(layer.named_buffers()):
            if t.is_floating_point() and t.numel():
                r = torch.rand(t.shape, generator=g, dtype=t.dtype)
                t.copy_(r + 0.5 if name.endswith(("weight", "running_var")) else r - 0.5)
    model = nn.Sequential(layer).train(training)
    return model, copy.deepcopy(model)


def _run(model, sample):
    x = sample.forward_input.args[0].detach().clone().requires_grad_(True)
    y = model(x)
    grads = {}
    if y.requires_grad and y.numel():
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
        grads = {"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return y.detach(), grads, dict(model.named_buffers())


def _assert_same(got, want):
    (y1, g1, b1), (y2, g2, b2) = got, want
    torch.testing.assert_close(y1, y2)
    assert set(g1) == set(g2)
    for k in g2:
        torch.testing.assert_close(g1[k], g2[k], msg=k)
    assert set(b1) == set(b2)
    for k in b2:
        torch.testing.assert_close(b1[k], b2[k], msg=k)


@pytest.mark.parametrize("mi, sample, training", CASES)
def test_sync_batchnorm_of_torch_layer_matches_it(mi, sample, training):
    model, ref = _pair(mi, sample, training)
    before = ref.state_dict()
    report = sync_batchnorm(model)
    assert len(report) == 1 and model[0].sync and isinstance(model[0], mi.module_cls)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    _assert_same(_run(model, sample), _run(ref, sample))


@pytest.mark.parametrize("mi, sample, training", CASES)
def test_sync_batchnorm_torch_layers_matches_convert_sync_batchnorm(mi, sample, training):
    model, ref = _pair(mi, sample, training)
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(ref)
    sync_batchnorm(model, torch_layers=True)
    assert type(model[0]) is type(theirs[0]) is nn.SyncBatchNorm
    a, b = model.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in b)
    x = sample.forward_input.args[0].detach()
    torch.testing.assert_close(model.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("mi, sample, training", CASES)
def test_convert_norms_to_batchnorm_matches_the_torch_layer(mi, sample, training):
    model, ref = _pair(mi, sample, training)
    if mi.module_cls is nn.BatchNorm3d:
        with pytest.raises(NothingToChangeError, match="supports 0, 1 or 2 spatial dimensions"):
            convert_norms(model, "batchnorm")
        return
    before = set(ref.state_dict())
    convert_norms(model, "batchnorm")
    assert type(model[0]).__module__ == "traintricks.nn.batchnorm" and set(model.state_dict()) == before
    _assert_same(_run(model, sample), _run(ref, sample))
