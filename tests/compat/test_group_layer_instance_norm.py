"""Compatibility suite: traintricks' GroupNorm / LayerNorm / InstanceNorm1d/2d/3d side by side with PyTorch's,
on PyTorch's own sample inputs (``torch.testing._internal.common_modules.module_db``), float64, CPU.

For every sample of every module, in training and eval mode, for both ``impl="fast"`` and ``impl="reference"``,
with the input as given and as a non-contiguous view of the same values: both modules are built from the same
constructor arguments, PyTorch's parameters and buffers are randomized and loaded into ours (PyTorch's
``state_dict`` into ours, and ours back into a fresh PyTorch module), then outputs, input and parameter
gradients, buffers after the step and ``state_dict`` keys are compared. The hand-written backward
(``impl="reference"``) is gradchecked and gradgradchecked on each sample. ``module_error_inputs_func``'s cases
must raise the same error in ours; a list of bad inputs must raise the same exception type in both.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db

import traintricks.nn as tnn

PAIRS = {nn.GroupNorm: tnn.GroupNorm, nn.LayerNorm: tnn.LayerNorm, nn.InstanceNorm1d: tnn.InstanceNorm1d,
         nn.InstanceNorm2d: tnn.InstanceNorm2d, nn.InstanceNorm3d: tnn.InstanceNorm3d}
INFOS = {info.module_cls: info for info in module_db if info.module_cls in PAIRS}
DT = torch.float64


def _samples(info, training):
    torch.manual_seed(0)
    return info.module_inputs_func(info, device="cpu", dtype=DT, requires_grad=True, training=training)


def _cases():
    cases = []
    for cls, info in INFOS.items():
        for training in (True, False):
            for i, s in enumerate(_samples(info, training)):
                for impl in ("fast", "reference"):
                    for layout in ("given", "noncontig"):
                        mode = "train" if training else "eval"
                        cases.append(pytest.param(cls, training, i, impl, layout,
                                                  id=f"{cls.__name__}-{s.desc or i}-{mode}-{impl}-{layout}"))
    return cases


def test_module_db_has_every_pair():
    assert set(INFOS) == set(PAIRS)


def _randomize(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
        for name, b in m.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 0.5 if "var" in name else torch.randn_like(b))


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view (every other element of a twice-as-long last dimension)."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype) if t.ndim else None
    if big is None:
        return t
    big[..., ::2] = t.detach()
    return big[..., ::2].requires_grad_(t.requires_grad)


@pytest.mark.parametrize("cls, training, index, impl, layout", _cases())
def test_same_as_pytorch_on_its_sample_inputs(cls, training, index, impl, layout):
    info = INFOS[cls]
    sample = _samples(info, training)[index]
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(1)
    theirs = cls(*args, **kwargs).to(DT)
    ours = PAIRS[cls](*args, **kwargs, impl=impl).to(DT)
    assert isinstance(ours, cls)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    _randomize(theirs)
    ours.load_state_dict(theirs.state_dict())                 # PyTorch's state into ours ...
    back = cls(*args, **kwargs).to(DT)
    back.load_state_dict(ours.state_dict())                   # ... and ours into PyTorch's
    theirs.train(training), ours.train(training)

    x = sample.forward_input.args[0]
    assert not sample.forward_input.kwargs
    if layout == "noncontig":
        if x.ndim == 0 or x.numel() == 0:
            pytest.skip("no non-contiguous view of an empty or 0-d input")
        x = _noncontig(x)
        assert not x.is_contiguous()
    xa = x.detach().clone().requires_grad_() if layout == "given" else _noncontig(x)
    xb = x.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yb = theirs(xb)
        ya = ours(xa)
    torch.testing.assert_close(ya, yb)
    for (na, ba), (nb, bb) in zip(ours.named_buffers(), theirs.named_buffers()):
        assert na == nb
        torch.testing.assert_close(ba, bb, msg=lambda m: f"buffer {na}: {m}")
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    if yb.numel():
        torch.testing.assert_close(xa.grad, xb.grad)
    for (na, pa), (nb, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=lambda m: f"grad of {na}: {m}")

    if impl == "reference" and layout == "given" and x.numel():
        # the hand-written backward, and its own derivative (double backward)
        params = [p for p in ours.parameters()]

        def f(inp, *ps):
            return ours(inp)
        inputs = (x.detach().clone().requires_grad_(), *params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
            assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def _error_cases():
    cases = []
    for cls, info in INFOS.items():
        if info.module_error_inputs_func is None:
            continue
        errs = info.module_error_inputs_func(info, device="cpu", dtype=DT, requires_grad=False, training=True)
        for i, _ in enumerate(errs):
            cases.append(pytest.param(cls, i, id=f"{cls.__name__}-{i}"))
    return cases


@pytest.mark.parametrize("cls, index", _error_cases())
def test_pytorch_error_inputs_raise_the_same_error(cls, index):
    info = INFOS[cls]
    err = info.module_error_inputs_func(info, device="cpu", dtype=DT, requires_grad=False, training=True)[index]
    mi = err.module_error_input
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    for impl in ("fast", "reference"):
        if err.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(err.error_type, match=err.error_regex):
                PAIRS[cls](*args, **kwargs, impl=impl)
        else:
            m = PAIRS[cls](*args, **kwargs, impl=impl).to(DT)
            with pytest.raises(err.error_type, match=err.error_regex):
                m(*mi.forward_input.args, **mi.forward_input.kwargs)


# (constructor args, kwargs, input shape, training): inputs PyTorch rejects (or, affine=False, accepts)
BAD_INPUTS = [
    (nn.GroupNorm, (3, 6), {}, (6,), True),                 # rank 1
    (nn.GroupNorm, (3, 6), {}, (2, 4, 3), True),            # channels not divisible by the groups
    (nn.GroupNorm, (2, 8), {}, (2, 6, 3, 3), True),         # channels do not match weight
    (nn.GroupNorm, (2, 8), {"affine": False}, (2, 6, 3, 3), True),   # accepted by PyTorch: same output
    (nn.GroupNorm, (3, 6), {}, (0, 6, 5), True),            # empty batch: accepted
    (nn.GroupNorm, (3, 6), {}, (2, 6, 0), False),           # empty positions: accepted
    (nn.LayerNorm, (5,), {}, (4,), True),                   # trailing dims do not match
    (nn.LayerNorm, ([2, 5],), {}, (5,), True),
    (nn.LayerNorm, (5,), {}, (), True),
    (nn.LayerNorm, (5,), {}, (5,), True),                   # unbatched: accepted
    (nn.LayerNorm, (32,), {}, (3, 32, 32), True),           # the (B, T, 32) with T == 32
    (nn.InstanceNorm1d, (3,), {}, (3,), True),              # rank 1
    (nn.InstanceNorm1d, (3,), {}, (2, 3, 1), True),         # one position per channel in training
    (nn.InstanceNorm1d, (3,), {"track_running_stats": True}, (2, 3, 1), False),  # eval with running stats: fine
    (nn.InstanceNorm2d, (3,), {"affine": True}, (2, 4, 3, 3), True),     # wrong channels with affine
    (nn.InstanceNorm2d, (3,), {}, (2, 4, 3, 3), True),      # wrong channels without affine: a warning
    (nn.InstanceNorm2d, (3,), {}, (0, 3, 4, 4), True),      # empty batch
    (nn.InstanceNorm2d, (3,), {"track_running_stats": True}, (0, 3, 4, 4), True),
    (nn.InstanceNorm3d, (3,), {}, (2, 3, 4, 4), True),      # rank 4 is unbatched for 3d
    (nn.InstanceNorm3d, (3,), {}, (2, 3, 4), True),
]


def _run(m, shape):
    torch.manual_seed(2)
    x = torch.randn(shape, dtype=DT)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            return m(x), None, [str(i.message) for i in w]
        except Exception as e:  # noqa: BLE001 -- the point is to compare whatever is raised
            return None, e, [str(i.message) for i in w]


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_and_edge_inputs_as_pytorch(case, impl):
    cls, args, kwargs, shape, training = BAD_INPUTS[case]
    theirs = cls(*args, **kwargs).to(DT).train(training)
    ours = PAIRS[cls](*args, **kwargs, impl=impl).to(DT).train(training)
    ya, ea, wa = _run(ours, shape)
    yb, eb, wb = _run(theirs, shape)
    assert type(ea) is type(eb), f"ours raised {ea!r}, PyTorch {eb!r}"
    if eb is None:
        torch.testing.assert_close(ya, yb)
        assert bool(wa) == bool(wb), (wa, wb)
        for ba, bb in zip(ours.buffers(), theirs.buffers()):
            torch.testing.assert_close(ba, bb, equal_nan=True)
