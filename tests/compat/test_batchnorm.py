"""Compatibility suite, batch norm: PyTorch's own sample inputs (``torch.testing._internal.common_modules.module_db``,
entries ``nn.BatchNorm1d/2d/3d``) run side by side with ``traintricks.nn.BatchNorm1d/2d/3d`` (both ``impl``s), float64,
CPU: same constructor arguments, same initial state, then forward outputs, input and parameter gradients, buffers
after forward (train and eval), ``state_dict`` keys, ``state_dict`` loading both ways, and the error inputs of
``module_error_inputs_func``."""
from __future__ import annotations

import re

import pytest
import torch
from torch.testing._internal.common_modules import module_db

import traintricks.nn as ttnn

OURS = {torch.nn.BatchNorm1d: ttnn.BatchNorm1d, torch.nn.BatchNorm2d: ttnn.BatchNorm2d,
        torch.nn.BatchNorm3d: ttnn.BatchNorm3d}
INFOS = [mi for mi in module_db if mi.module_cls in OURS]
DTYPE = torch.float64


def _cases():
    cases = []
    for mi in INFOS:
        for training in (True, False):
            samples = mi.module_inputs_func(mi, device="cpu", dtype=DTYPE, requires_grad=True, training=training)
            for i, s in enumerate(samples):
                for impl in ("fast", "reference"):
                    mode = "train" if training else "eval"
                    cases.append(pytest.param(mi, s, training, impl,
                                              id=f"{mi.name}-{mode}-{i}-{s.desc or 'default'}-{impl}"))
    return cases


def _error_cases():
    cases = []
    for mi in INFOS:
        if mi.module_error_inputs_func is None:
            continue
        for training in (True, False):
            errs = mi.module_error_inputs_func(mi, device="cpu", dtype=DTYPE, requires_grad=True, training=training)
            for i, e in enumerate(errs):
                for impl in ("fast", "reference"):
                    cases.append(pytest.param(mi, e, training, impl,
                                              id=f"{mi.name}-{'train' if training else 'eval'}-{i}-{impl}"))
    return cases


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """A non-trivial initial state (weights, biases, running estimates), the same for both twins."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or t.numel() == 0:
                continue
            r = torch.rand(t.shape, generator=g, dtype=t.dtype)
            t.copy_(r + 0.5 if name.endswith(("weight", "running_var")) else r - 0.5)


def _clone_inputs(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("mi, sample, training, impl", _cases())
def test_module_db_sample(mi, sample, training, impl):
    ctor = sample.constructor_input
    theirs = mi.module_cls(*ctor.args, **ctor.kwargs).to(DTYPE)
    ours = OURS[mi.module_cls](*ctor.args, **ctor.kwargs, impl=impl).to(DTYPE)
    assert isinstance(ours, mi.module_cls)          # issue 15 (testers, J): `isinstance(m, nn.BatchNorm2d)` sees ours
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    _randomize(theirs, 0)
    ours.load_state_dict(theirs.state_dict())
    theirs.train(training), ours.train(training)
    for step in range(2):                     # twice: the running estimates' update is seen from its second step
        args_t = _clone_inputs(sample.forward_input.args)
        args_o = _clone_inputs(sample.forward_input.args)
        yt = theirs(*args_t, **sample.forward_input.kwargs)
        yo = ours(*args_o, **sample.forward_input.kwargs)
        torch.testing.assert_close(yo, yt)
        grad = torch.randn(yt.shape, generator=torch.Generator().manual_seed(step), dtype=DTYPE)
        diff_t = [a for a in args_t if isinstance(a, torch.Tensor) and a.requires_grad] + list(theirs.parameters())
        diff_o = [a for a in args_o if isinstance(a, torch.Tensor) and a.requires_grad] + list(ours.parameters())
        if yt.requires_grad:
            gt = torch.autograd.grad(yt, diff_t, grad, allow_unused=True)
            go = torch.autograd.grad(yo, diff_o, grad, allow_unused=True)
            for a, b in zip(go, gt):
                if b is None:
                    assert a is None or not a.any()
                else:
                    torch.testing.assert_close(a, b)
        for (name, bt), (name_o, bo) in zip(theirs.named_buffers(), ours.named_buffers()):
            assert name == name_o
            torch.testing.assert_close(bo, bt, equal_nan=True)
    # an empty batch of the same shape: counted, estimates unchanged (issue 15, testers, A), as torch
    x = sample.forward_input.args[0] if sample.forward_input.args else None
    if isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[0] > 0:
        empty = x.detach()[:0]
        assert ours(empty).shape == theirs(empty).shape
        for (_, bt), (_, bo) in zip(theirs.named_buffers(), ours.named_buffers()):
            torch.testing.assert_close(bo, bt, equal_nan=True)
    # state_dict both ways
    back = mi.module_cls(*ctor.args, **ctor.kwargs).to(DTYPE)
    back.load_state_dict(ours.state_dict())
    again = OURS[mi.module_cls](*ctor.args, **ctor.kwargs, impl=impl).to(DTYPE)
    again.load_state_dict(theirs.state_dict())
    for (_, a), (_, b) in zip(back.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, equal_nan=True)


def _outcome(make, fwd):
    """``(exception type, message)`` of constructing and calling the module, or ``None`` when it works."""
    try:
        m = make()
        m(*_clone_inputs(fwd.args), **fwd.kwargs)
    except Exception as e:      # noqa: BLE001 - the error itself is what is compared
        return type(e), str(e)
    return None


@pytest.mark.parametrize("mi, err, training, impl", _error_cases())
def test_module_db_error_input(mi, err, training, impl):
    """The same outcome as torch's module on PyTorch's error inputs: the same exception type, torch's message
    inside ours (ours prefixes the layer's name); in training, the error the database expects. (At inference
    torch accepts eps = 0 and rejects eps < 0 with another message: ours does the same.)"""
    sample = err.module_error_input
    ctor, fwd = sample.constructor_input, sample.forward_input
    theirs = _outcome(lambda: mi.module_cls(*ctor.args, **ctor.kwargs).to(DTYPE).train(training), fwd)
    ours = _outcome(lambda: OURS[mi.module_cls](*ctor.args, **ctor.kwargs, impl=impl).to(DTYPE).train(training), fwd)
    if theirs is None:
        assert ours is None, ours
        return
    assert ours is not None and issubclass(ours[0], theirs[0]), (ours, theirs)
    assert theirs[1] in ours[1], (ours, theirs)
    if training:
        assert issubclass(ours[0], err.error_type) and re.search(err.error_regex, ours[1])


def test_suite_covers_every_batchnorm_entry():
    assert {mi.module_cls for mi in INFOS} == set(OURS)
    assert len(_cases()) >= 80 and len(_error_cases()) >= 4
