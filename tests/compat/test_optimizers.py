"""Drop-in check against PyTorch's own optimizer test database (``torch.testing._internal.common_optimizers``).

For every class we mirror (SGD, Adagrad, RMSprop, Adam, AdamW), every sample of ``optim_inputs_func("cpu")`` is
run side by side with torch's class on the same float64 parameters: a small multi-tensor model with a strided
(non-contiguous) parameter and a channels_last one, some parameters without a gradient on some steps, a closure
on some steps. Ours runs on each path it has (default, ``foreach=True``, per tensor ``foreach=False``, ``fused=True``
where torch has the kernel); torch runs its default path (per tensor on CPU), the reference. After 5 steps the
parameters and every state tensor must match; then each ``state_dict`` is loaded into the other library's class
and all four optimizers continue 5 steps in lockstep. ``optim_error_inputs_func`` samples that raise at
construction (ValueError/TypeError, and the duplicate-parameter warning) must raise the same from ours.
LARS and LAMB are compared with ``pytorch_optimizer`` where its update rule is the paper's (skipped if absent).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import traintricks.optim as ours_mod

MIRRORED = ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")
INFOS = {oi.optim_cls.__name__: oi for oi in optim_db if oi.optim_cls.__name__ in MIRRORED}
PATHS = {"default": {}, "foreach": {"foreach": True}, "per_tensor": {"foreach": False}, "fused": {"fused": True}}


def _samples():
    for name, oi in INFOS.items():
        for s in oi.optim_inputs_func(device="cpu"):
            for path, extra in PATHS.items():
                if path == "fused" and "fused" not in oi.supported_impls:
                    continue                                # torch's RMSprop has no fused kernel (no fused=)
                yield pytest.param(name, s.kwargs, extra, id=f"{name}-{s.desc}-{path}".replace(" ", "_"))


def _model_params():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    return [torch.randn(5, 4, generator=g, dtype=torch.float64),            # a weight
            torch.randn(5, generator=g, dtype=torch.float64),               # its bias
            base[..., 0],                                                   # strided view of a bigger tensor
            torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last)]


def _make(params_init):
    out = []
    for x in params_init:
        holder = torch.zeros(*x.shape, 2, dtype=x.dtype)[..., 0] if not x.is_contiguous() and x.dim() == 2 else None
        if holder is not None:
            holder.copy_(x)
            out.append(torch.nn.Parameter(holder))
        else:
            out.append(torch.nn.Parameter(x.clone(memory_format=torch.preserve_format)))
    return out


def _loss(ps, step):
    x = torch.linspace(-1, 1, 4, dtype=torch.float64) * (1 + 0.1 * step)
    y = torch.tanh(ps[0] @ x + ps[1]).sum() + (ps[2] * ps[2].flip(0)).sum() * 0.3 + ps[3].sin().sum()
    return y + 0.01 * sum((p ** 2).sum() for p in ps)


def _step(opt, ps, step):
    """Gradients of the loss, with parameter k left without one at steps where (step + k) % 3 == 0; a closure
    on odd steps (its loss is returned by ``step``)."""
    def closure():
        opt.zero_grad()
        loss = _loss(ps, step)
        loss.backward()
        for k, p in enumerate(ps):
            if (step + k) % 3 == 0:
                p.grad = None
        return loss
    if step % 2:
        return opt.step(closure)
    closure()
    return opt.step()


def _kwargs(kwargs):
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}


def _compare(oa, pa, ob, pb):
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y)
        assert set(oa.state.get(x, {})) == set(ob.state.get(y, {})), (dict(oa.state.get(x, {})), ob.state.get(y))
        for key, v in ob.state.get(y, {}).items():
            mine = oa.state[x][key]
            if torch.is_tensor(v):
                # ours keeps step as the fused kernels need it (float32); the values must agree
                torch.testing.assert_close(mine.to(v.dtype) if key == "step" else mine, v, msg=f"state {key}")
            else:
                assert mine == v


@pytest.mark.parametrize("name, kwargs, extra", list(_samples()))
def test_optim_db_sample_matches_torch(name, kwargs, extra):
    ours_cls, torch_cls = getattr(ours_mod, name), INFOS[name].optim_cls
    init = _model_params()
    pa, pb = _make(init), _make(init)
    try:
        torch_cls(_make(init), **_kwargs(kwargs), **extra)
    except (ValueError, RuntimeError) as e:                  # a combination torch refuses: refused alike
        with pytest.raises(type(e)):
            ours_cls(pa, **_kwargs(kwargs), **extra)
        return
    oa, ob = ours_cls(pa, **_kwargs(kwargs), **extra), torch_cls(pb, **_kwargs(kwargs))
    for step in range(5):
        la, lb = _step(oa, pa, step), _step(ob, pb, step)
        assert (la is None) == (lb is None)
    _compare(oa, pa, ob, pb)
    # state_dict both ways: torch's into ours, ours into torch's; all four continue in lockstep
    pc, pd = _make([p.detach() for p in pb]), _make([p.detach() for p in pa])
    oc, od = ours_cls(pc, **_kwargs(kwargs), **extra), torch_cls(pd, **_kwargs(kwargs))
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))
    ours_sd = copy.deepcopy(oa.state_dict())
    if extra.get("fused"):
        # the group says fused=True, and torch's fused CPU kernels write outside strided parameters (the fault of
        # issue 15 item 1, theirs too): torch continues on its default path
        for group in ours_sd["param_groups"]:
            group["fused"] = None
    od.load_state_dict(ours_sd)
    assert set(oc.state_dict()["param_groups"][0]) == set(ob.state_dict()["param_groups"][0])
    for step in range(5, 10):
        for o, ps in ((oa, pa), (ob, pb), (oc, pc), (od, pd)):
            _step(o, ps, step)
    _compare(oa, pa, ob, pb)
    _compare(oc, pc, ob, pb)
    _compare(od, pd, ob, pb)   # torch continuing from our state_dict (our state dict is torch's)


def _error_samples():
    for name, oi in INFOS.items():
        for i, e in enumerate(oi.optim_error_inputs_func(device="cpu", dtype=torch.float64)):
            if e.error_on != OptimizerErrorEnum.CONSTRUCTION_ERROR:
                continue
            yield pytest.param(name, e, id=f"{name}-{i}-{e.error_type.__name__}")


@pytest.mark.parametrize("name, err", list(_error_samples()))
def test_optim_db_error_input_raises_like_torch(name, err):
    cls = getattr(ours_mod, name)
    inp = err.optimizer_error_input
    if issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex):
            cls(inp.params, **inp.kwargs)
        return
    with pytest.raises(err.error_type, match=err.error_regex):
        cls(inp.params, **inp.kwargs)


# ----------------------------------------------------------------------- LARS / LAMB against pytorch_optimizer
def _layered():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 4, generator=g, dtype=torch.float64) * 0.5, torch.randn(6, generator=g, dtype=torch.float64),
            torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)]


def _trajectories(make_a, make_b, steps=10):
    init = _layered()
    pa, pb = _make(init), _make(init)
    oa, ob = make_a(pa), make_b(pb)
    for step in range(steps):
        for o, ps in ((oa, pa), (ob, pb)):
            o.zero_grad()
            _loss([ps[0], ps[1], ps[0][:3, :2], ps[2]], step).backward()
            o.step()
    return pa, pb


def test_lars_matches_pytorch_optimizer():
    """Same rule (1708.03888 Algorithm 1, layers with ndim > 1 adapted, 1-D tensors plain SGD with momentum and
    no decay). pytorch_optimizer keeps b' = mu b' + d and steps lr b'; ours b = mu b + lr d and steps b: the
    same trajectory for a constant rate."""
    po = pytest.importorskip("pytorch_optimizer")
    kw = dict(lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02)
    pa, pb = _trajectories(lambda p: ours_mod.LARS(p, **kw), lambda p: po.LARS(p, **kw, foreach=False))
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_lamb_matches_pytorch_optimizer_where_the_rule_is_the_papers():
    """1904.00962 Algorithm 2 (no decay): ``x <- x - lr ||x|| r / ||r||``. pytorch_optimizer's Lamb matches with
    ``adam_debias=True`` (its default divides the step by 1 - beta1^t once more), every tensor adapted
    (ours ``exclude_1d=False``), and an eps too small to matter (it puts eps, not bias-corrected, in the
    denominator and in the trust ratio's); its weight-norm clamp (10) is not reached here."""
    po = pytest.importorskip("pytorch_optimizer")
    pa, pb = _trajectories(lambda p: ours_mod.LAMB(p, lr=0.01, weight_decay=0.0, eps=1e-14, exclude_1d=False),
                           lambda p: po.Lamb(p, lr=0.01, weight_decay=0.0, eps=1e-14, adam_debias=True, foreach=False))
    for x, y in zip(pa, pb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)
