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
    assert BatchNorm2d(3).alpha == 0.9 and BatchNorm2d(3, momentum=None).alpha is None   # 1 - momentum
    with pytest.raises(ValueError, match="disagree"):
        BatchNorm2d(3, alpha=0.9, momentum=0.5)
    with pytest.raises(ValueError, match="alpha"):
        BatchNorm2d(3, alpha=1.0)
    with pytest.raises(ValueError, match="impl"):
        BatchNorm2d(3, impl="cuda")


def test_alpha_gives_the_decimal_momentum_and_reads_back_issue15_K():
    """Issue 15 (testers, K): BatchNorm2d(4, alpha=0.9).momentum was 0.09999999999999998 (1 - 0.9 in binary).
    Right value: exactly 0.1 (torch's default, so equal to nn.BatchNorm2d(4).momentum), and alpha reads back."""
    import traintricks.memory as memory
    import traintricks.nn as tnn
    for cls in (BatchNorm2d, tnn.BatchRenorm2d, tnn.BatchNormAct2d, memory.InPlaceABN):
        bn = cls(4, alpha=0.9)
        assert bn.momentum == 0.1 == nn.BatchNorm2d(4).momentum
        assert bn.alpha == 0.9
        for a in (0.99, 0.7, 0.999, 0.0):
            bn.alpha = a
            assert bn.alpha == a and bn.momentum == float(f"{1 - a:.15g}")
        assert cls(4, alpha=0.99).momentum == 0.01
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(4, alpha=0.9).double(), nn.BatchNorm2d(4).double()
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    ours(x), theirs(x)
    assert torch.equal(ours.running_mean, theirs.running_mean) and torch.equal(ours.running_var, theirs.running_var)


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


# ---- issue 15: drop-in for torch.nn.BatchNorm*d (item 5), no host synchronization (item 6), API corners (item 12)

import copy  # noqa: E402

from traintricks.memory import InPlaceABN, InPlaceABN1d  # noqa: E402
from traintricks.nn import (BatchNorm3d, BatchNormAct2d, BatchRenorm2d, BatchRenormFunction,  # noqa: E402
                            FastBatchRenormFunction)
from traintricks.nn.fused import BatchNormActFunction  # noqa: E402

FAMILY = {   # every batch-norm-family layer and option that takes its own forward path
    "bn": lambda: BatchNorm2d(3), "bn_cumulative": lambda: BatchNorm2d(3, momentum=None),
    "bn_reference": lambda: BatchNorm2d(3, impl="reference"),
    "bn_no_tracking": lambda: BatchNorm2d(3, track_running_stats=False),
    "bn_not_affine": lambda: BatchNorm2d(3, affine=False),
    "renorm": lambda: BatchRenorm2d(3, warmup_steps=2, r_ramp_steps=3, d_ramp_steps=3),
    "renorm_reference": lambda: BatchRenorm2d(3, warmup_steps=0, impl="reference"),
    "bn_relu": lambda: BatchNormAct2d(3), "bn_gelu": lambda: BatchNormAct2d(3, activation="gelu"),
    "inplace_abn": lambda: InPlaceABN(3), "inplace_abn_cumulative": lambda: InPlaceABN(3, momentum=None),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(FAMILY))
def test_no_graph_breaks_in_any_batchnorm_layer(name, train):
    """Issue 15 item 6: every BN layer broke a torch.compile graph twice in training
    (bool(torch.isfinite(...).all())). Right value: zero graph breaks, train and eval."""
    torch._dynamo.reset()
    m = FAMILY[name]().train(train)
    explain = torch._dynamo.explain(m)(torch.randn(4, 3, 5, 5))
    assert explain.graph_break_count == 0, [b.reason for b in explain.break_reasons]
    assert explain.graph_count == 1


@pytest.mark.parametrize("name", ["bn", "bn_cumulative", "renorm", "bn_gelu", "inplace_abn"])
def test_compiled_forward_equals_eager_with_running_estimates(name):
    torch.manual_seed(0)
    eager, compiled = FAMILY[name](), FAMILY[name]()
    run = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = eager(xa), run(xb)
        torch.testing.assert_close(yb, ya)
        ya.sum().backward(), yb.sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[k], v)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(FAMILY))
def test_torch_export_and_meta_device(name, train):
    """Issue 15 item 6: torch.export failed for BN in training; the meta device failed."""
    x = torch.randn(4, 3, 5, 5)
    ep = torch.export.export(FAMILY[name]().train(train), (x,))
    m = FAMILY[name]().train(train)
    torch.testing.assert_close(ep.module()(x), m(x))
    meta = FAMILY[name]().to("meta").train(train)
    assert meta(x.to("meta")).shape == x.shape


@pytest.mark.parametrize("kwargs, works", [({"track_running_stats": False}, True), ({}, False),
                                           ({"momentum": None}, False)])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_vmap_over_a_batch_of_batches_as_torch(kwargs, works, train):
    """vmap works where torch's BatchNorm2d does (no running estimates to update in place) and raises torch's
    error where torch's does."""
    from torch.func import vmap
    xs = torch.randn(3, 4, 3, 5, 5)
    ours, theirs = BatchNorm2d(3, **kwargs).train(train), nn.BatchNorm2d(3, **kwargs).train(train)
    if works or not train:
        torch.testing.assert_close(vmap(ours)(xs), vmap(theirs)(xs))
    else:
        with pytest.raises(RuntimeError, match="running_mean or running_var"):
            vmap(theirs)(xs)
        with pytest.raises(RuntimeError, match="running_mean or running_var"):
            vmap(ours)(xs)


def test_cumulative_average_for_momentum_none_equals_torch():
    torch.manual_seed(0)
    ours, theirs = BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4, momentum=None)
    for i in range(4):
        x = torch.randn(8 + i, 4) * (i + 1) + i
        torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == 4


def test_torch_tools_see_our_batchnorm():
    """Issue 15 item 5: convert_sync_batchnorm, swa_utils.update_bn, torch.fx and fuse_modules see our layers."""
    from torch.ao.quantization import fuse_modules
    from torch.optim.swa_utils import update_bn
    assert isinstance(BatchNorm2d(3), nn.modules.batchnorm._BatchNorm)
    assert isinstance(BatchNormAct2d(3), nn.modules.batchnorm._NormBase)
    # convert_sync_batchnorm: our plain BN becomes torch's SyncBatchNorm with its state; the fused
    # norm + activation is not replaced by a SyncBatchNorm that would drop the activation
    bn = BatchNorm2d(3, momentum=0.3)
    bn(torch.randn(4, 3, 2, 2))
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn, BatchNormAct2d(3)))
    assert type(conv[0]) is nn.SyncBatchNorm and type(conv[1]) is BatchNormAct2d
    assert torch.equal(conv[0].running_mean, bn.running_mean) and conv[0].momentum == 0.3
    # update_bn: the running estimates become the cumulative average over the loader
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), BatchNorm1d(3, momentum=0.3))
    data = [torch.randn(8, 2) * 3 + 1 for _ in range(3)]
    update_bn(data, model)
    with torch.no_grad():
        h = [model[0](d) for d in data]
    torch.testing.assert_close(model[1].running_mean, torch.stack([a.mean(0) for a in h]).mean(0))
    torch.testing.assert_close(model[1].running_var, torch.stack([a.var(0) for a in h]).mean(0))
    assert model[1].momentum == 0.3
    # torch.fx: one call_module node per layer (as torch's own norm layers), train/eval still switchable
    model = nn.Sequential(nn.Conv2d(3, 3, 3), BatchNorm2d(3), BatchNormAct2d(3), BatchRenorm2d(3), InPlaceABN(3))
    gm = torch.fx.symbolic_trace(model)
    assert [n.op for n in gm.graph.nodes] == ["placeholder"] + ["call_module"] * 5 + ["output"]
    x = torch.randn(4, 3, 7, 7)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(gm(x), twin(x))
    gm.eval(), twin.eval()
    torch.testing.assert_close(gm(x), twin(x))
    # fuse_modules in eval: conv + BN (+ ReLU), linear + BN
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm2d(4), nn.ReLU()).eval()
    m[1].running_mean.normal_(), m[1].running_var.uniform_(0.5, 2), m[1].weight.data.normal_()
    fused = fuse_modules(m, [["0", "1", "2"]])
    assert [type(a) for a in fused] == [torch.ao.nn.intrinsic.ConvReLU2d, nn.Identity, nn.Identity]
    torch.testing.assert_close(fused(x), m(x))
    m = nn.Sequential(nn.Linear(3, 4), BatchNorm1d(4)).eval()
    m[1].running_var.uniform_(0.5, 2)
    fused = fuse_modules(m, [["0", "1"]])
    assert type(fused[1]) is nn.Identity
    x = torch.randn(5, 3)
    torch.testing.assert_close(fused(x), m(x))


@pytest.mark.parametrize("affine, track", [(True, True), (False, True), (True, False), (False, False)])
def test_state_dict_keys_and_loading_both_ways(affine, track):
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(3, affine=affine, track_running_stats=track), nn.BatchNorm2d(3, affine=affine,
                                                                                            track_running_stats=track)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs(torch.randn(4, 3, 2, 2) * 2 + 1)
    ours.load_state_dict(theirs.state_dict())
    back = nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    back.load_state_dict(ours.state_dict())
    ours.eval(), back.eval(), theirs.eval()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(back(x), theirs(x))
    # a state_dict saved before num_batches_tracked existed (version 1) loads as torch's does
    sd = theirs.state_dict()
    sd.pop("num_batches_tracked", None)
    sd._metadata = {"": {"version": 1}}
    ours.load_state_dict(sd)


@pytest.mark.parametrize("cls", [BatchNorm2d, BatchRenorm2d, BatchNormAct2d, InPlaceABN])
def test_reset_methods_device_and_dtype(cls):
    """Issue 15 item 12: reset_parameters / reset_running_stats, device= and dtype= on every layer."""
    m = cls(3, device="cpu", dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in list(m.parameters()) + [m.running_mean, m.running_var])
    assert m.num_batches_tracked.dtype == torch.long
    with torch.no_grad():
        m.weight.fill_(2.0), m.bias.fill_(3.0)
    m(torch.randn(4, 3, 2, 2, dtype=torch.float64))
    m.reset_running_stats()
    assert torch.equal(m.running_mean, torch.zeros(3, dtype=torch.float64)) and int(m.num_batches_tracked) == 0
    assert m.weight[0] == 2.0
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones(3, dtype=torch.float64))
    assert torch.equal(m.bias, torch.zeros(3, dtype=torch.float64))
    assert cls(3, device="meta").running_var.is_meta


def test_torch_signature_and_repr():
    import inspect
    for ours, theirs in [(BatchNorm1d, nn.BatchNorm1d), (BatchNorm2d, nn.BatchNorm2d), (BatchNorm3d, nn.BatchNorm3d)]:
        p_ours, p_theirs = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        for name, p in p_theirs.items():
            assert p_ours[name].default == p.default and p_ours[name].kind == p.kind, name
        extra = [n for n in p_ours if n not in p_theirs]
        assert all(p_ours[n].kind == inspect.Parameter.KEYWORD_ONLY for n in extra), extra
        assert repr(ours(4, momentum=None)) == repr(theirs(4, momentum=None))


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (5, 3, 0)])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_empty_batches_as_torch(shape, impl):
    ours, theirs = BatchNorm1d(3, impl=impl), nn.BatchNorm1d(3)
    with torch.no_grad():
        for m in (ours, theirs):
            m.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    xa, xb = torch.randn(shape, requires_grad=True), None
    xb = xa.detach().clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert ya.shape == yb.shape
    ya.sum().backward(), yb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, equal_nan=True)


def test_errors_as_torch():
    for x in (torch.randn(3), torch.randn(2, 3, 4, 5)):          # unbatched / wrong rank: torch's ValueError
        with pytest.raises(ValueError) as theirs:
            nn.BatchNorm1d(3)(x)
        with pytest.raises(ValueError, match=str(theirs.value).replace("(", r"\(").replace(")", r"\)")):
            BatchNorm1d(3)(x)
    for eps in (0.0, -1.0):                                      # eps is checked in forward, as torch does
        m = BatchNorm2d(3, eps=eps)
        with pytest.raises(ValueError, match="eps must be positive"):
            m(torch.randn(2, 3, 2, 2))
    assert BatchNorm2d(3, eps=0.0).eval()(torch.randn(2, 3, 2, 2)).shape == (2, 3, 2, 2)
    # affine=False and no running estimates: nothing per channel, any channel count normalizes (as torch)
    x = torch.ones(4, 5) * torch.arange(4.0)[:, None]
    torch.testing.assert_close(BatchNorm1d(3, affine=False, track_running_stats=False)(x),
                               nn.BatchNorm1d(3, affine=False, track_running_stats=False)(x))


def test_reference_impl_double_backward_is_right():
    """Issue 15 item 5: impl="reference" double backward is right (gradgradcheck, float64)."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, c, d: BatchNormFunction.apply(a, c, d, 1e-5)[0], (x, g, b))
    for train in (True, False):
        bn = BatchNorm2d(3, impl="reference").double().train(train)
        assert torch.autograd.gradgradcheck(lambda a: bn(a), (x,))


def test_custom_backwards_refuse_double_backward_clearly():
    """The custom backwards that are not differentiable again raise instead of giving a silently wrong second
    derivative (they saved values computed without a graph)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    calls = [lambda: BatchRenormFunction.apply(x, g, b, rm, rv, 2.0, 1.0, 1e-5)[0],
             lambda: FastBatchRenormFunction.apply(x, g, b, rm, rv, 2.0, 1.0, 1e-5)[0],
             lambda: BatchNormActFunction.apply(x, g, b, 1e-5, "gelu", 0.01)[0],
             lambda: InPlaceABN(3).double()(x)]
    for call in calls:
        (gx,) = torch.autograd.grad(call().square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
            gx.sum().backward()


def test_no_host_read_in_forward_unless_check_finite_is_on():
    """Issue 15 item 6: the non-finite check is opt-in; by default NaN inputs flow through as in torch."""
    x = torch.full((2, 3, 2, 2), float("nan"))
    assert torch.isnan(BatchNorm2d(3)(x)).all()
    with pytest.raises(ValueError, match="non-finite"):
        BatchNorm2d(3, check_finite=True)(x)
    m = BatchNorm2d(3, check_finite=True)
    with pytest.raises(ValueError):
        m(x)
    assert torch.equal(m.running_mean, torch.zeros(3)) and int(m.num_batches_tracked) == 0   # checked first


def test_batchnorm3d_and_inplace_abn1d_shapes():
    x = torch.randn(3, 4, 2, 3, 2, dtype=torch.float64)
    ours, theirs = BatchNorm3d(4).double(), nn.BatchNorm3d(4).double()
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert InPlaceABN1d(4)(torch.randn(5, 4, 3)).shape == (5, 4, 3)


@pytest.mark.parametrize("cls_name", ["BatchNorm2d", "BatchNormAct2d", "BatchRenorm2d", "InPlaceABN"])
def test_cumulative_warmup_averages_the_first_batches_then_follows_momentum(cls_name):
    # rate max(momentum, 1/t): the plain mean of the first 1/momentum batches' statistics, then the EMA
    # (issue 15 item 13: short runs evaluated with running estimates still near their initial 0/1)
    import traintricks.memory as memory
    import traintricks.nn as tnn
    cls = getattr(tnn, cls_name, None) or getattr(memory, cls_name)
    torch.manual_seed(0)
    bn = cls(3, momentum=0.25, cumulative_warmup=True).double()
    xs = [torch.randn(8, 3, 4, 4, dtype=torch.float64) * (i + 1) + i for i in range(7)]
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for t, x in enumerate(xs, 1):
        bn(x)
        rate = max(0.25, 1 / t)
        mean = (1 - rate) * mean + rate * x.mean((0, 2, 3))
        var = (1 - rate) * var + rate * x.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-12, atol=1e-12)
    # after the first batch nothing is left of the initial values
    fresh = cls(3, momentum=0.25, cumulative_warmup=True).double()
    fresh(xs[3])
    torch.testing.assert_close(fresh.running_mean, xs[3].mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
    assert "cumulative_warmup=True" in repr(fresh)


def test_cumulative_warmup_has_no_graph_breaks_and_models_by_name_use_it():
    from traintricks.nn import make_norm
    bn = make_norm("batchnorm", 4)
    assert bn.cumulative_warmup and abs(bn.momentum - 0.1) < 1e-12
    assert not BatchNorm2d(4).cumulative_warmup            # the class default is PyTorch's plain momentum
    torch._dynamo.reset()
    explain = torch._dynamo.explain(bn)(torch.randn(4, 4, 3, 3))
    assert explain.graph_break_count == 0


# -- issue 15, faults found by the testers (A, B, I, J, L for the batch-norm family) ----------------------------
from traintricks.nn import BatchNormAct1d, BatchRenorm1d, BatchRenorm3d  # noqa: E402

EMPTY_CASES = {   # layers whose running estimates must move as torch's BatchNorm1d(momentum=...) around an empty batch
    "bn_none": (lambda: BatchNorm1d(3, momentum=None), None),
    "bn_none_reference": (lambda: BatchNorm1d(3, momentum=None, impl="reference"), None),
    "bn_0.1": (lambda: BatchNorm1d(3), 0.1),
    "bn_0.1_reference": (lambda: BatchNorm1d(3, impl="reference"), 0.1),
    # cumulative_warmup: rate max(0.1, 1/t) -- the first 10 batches are torch's cumulative average
    "bn_cumulative_warmup": (lambda: BatchNorm1d(3, cumulative_warmup=True), None),
    "bn_cumulative_warmup_reference": (lambda: BatchNorm1d(3, cumulative_warmup=True, impl="reference"), None),
    "inplace_abn_none": (lambda: InPlaceABN1d(3, momentum=None), None),
    "inplace_abn_cumulative_warmup": (lambda: InPlaceABN1d(3, cumulative_warmup=True), None),
    "bn_relu_none": (lambda: BatchNormAct1d(3, momentum=None), None),
    "bn_gelu_none": (lambda: BatchNormAct1d(3, momentum=None, activation="gelu"), None),
    "renorm_none": (lambda: BatchRenorm1d(3, momentum=None), None),
    "renorm_none_reference": (lambda: BatchRenorm1d(3, momentum=None, impl="reference"), None),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_empty_batch_leaves_running_estimates_as_torch_issue15_A(case):
    """Issue 15 (testers, A): momentum=None batch norm on an empty batch halved the running statistics
    (the cumulative average moved 1/2 of the way towards zeros). Right value: torch leaves them unchanged and
    counts the batch (num_batches_tracked 2), so the next batch gets rate 1/3."""
    make, momentum = EMPTY_CASES[case]
    torch.manual_seed(0)
    ours, theirs = make().double(), nn.BatchNorm1d(3, momentum=momentum).double()
    for x in (torch.randn(4, 3, dtype=torch.float64) * 2 + 1, torch.empty(0, 3, dtype=torch.float64),
              torch.randn(5, 3, dtype=torch.float64) - 1, torch.empty(0, 3, 4, dtype=torch.float64)):
        assert ours(x).shape == theirs(x).shape == x.shape
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)
    assert int(theirs.num_batches_tracked) == 4


def _clipped_renorm(impl):
    """Batch renorm with r and d clipped at their limits (running estimates far from the batch's): constants,
    so the stop-gradient backward is the true derivative and gradcheck applies."""
    m = BatchRenorm1d(2, warmup_steps=0, r_ramp_steps=0, d_ramp_steps=0, rmax=1.5, dmax=0.5, impl=impl)
    m.running_mean.fill_(50.0), m.running_var.fill_(1e4)
    return m


DOUBLE_BACKWARD = {   # the custom backwards that cannot be differentiated again (training mode)
    "bn_gelu": lambda: BatchNormAct1d(2, activation="gelu"),
    "renorm_fast": lambda: _clipped_renorm("fast"),
    "renorm_reference": lambda: _clipped_renorm("reference"),
    "inplace_abn": lambda: InPlaceABN1d(2),
}


@pytest.mark.parametrize("name", list(DOUBLE_BACKWARD))
def test_double_backward_raises_instead_of_silently_vanishing_issue15_B(name):
    """Issue 15 (testers, B): grad(bn(x).sum(), x, create_graph=True) returned a gradient with
    requires_grad=False (torch's BN + GELU: True), so a gradient penalty silently contributed nothing
    (once_differentiable decides by the incoming gradient, a constant for a sum). Right value: the gradient
    requires grad, and differentiating it raises; single backward unchanged (gradcheck, float64)."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    twin = nn.Sequential(nn.BatchNorm1d(2), nn.GELU()).double()       # torch: the gradient is differentiable
    (gt,) = torch.autograd.grad(twin(x).sum(), x, create_graph=True)
    assert gt.requires_grad
    bn = DOUBLE_BACKWARD[name]().double()
    for wrt in ([x], [bn.weight], [x, bn.weight]):
        grads = torch.autograd.grad(bn(x).sum(), wrt, create_graph=True)
        assert all(g.requires_grad for g in grads)
        with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
            sum(g.square().sum() for g in grads).backward()
    # no create_graph: plain backward, and the gradients do not require grad
    (g,) = torch.autograd.grad(bn(x).sum(), x)
    assert not g.requires_grad
    # single backward is right
    assert torch.autograd.gradcheck(lambda a: DOUBLE_BACKWARD[name]().double()(a), (x,))


def test_refuse_double_backward_decorator_and_the_sync_path_uses_it():
    """The guard itself: the gradient is right, requires grad, and raises naming the function when
    differentiated again. The synchronized batch norm's backward (traintricks.parallel) uses it too."""
    from traintricks.nn.double_backward import refuse_double_backward

    class Square(torch.autograd.Function):     # the guard on a trivially non-differentiable backward
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        @refuse_double_backward("Square")
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return 2 * a * g

    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(Square.apply(a).sum(), a, create_graph=True)
    torch.testing.assert_close(g, 2 * a.detach())
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="Square cannot be differentiated twice"):
        g.sum().backward()
    import inspect

    from traintricks.nn import sync_batchnorm
    assert "refuse_double_backward" in inspect.getsource(sync_batchnorm.SyncBatchNormFunction)


BF16_FAMILY = {   # our layer, torch's twin (the dtype and values to match)
    "bn1d": (lambda i: BatchNorm1d(4, impl=i), lambda: nn.BatchNorm1d(4), (6, 4, 3)),
    "bn2d": (lambda i: BatchNorm2d(4, impl=i), lambda: nn.BatchNorm2d(4), (6, 4, 3, 3)),
    "bn3d": (lambda i: BatchNorm3d(4, impl=i), lambda: nn.BatchNorm3d(4), (3, 4, 2, 3, 2)),
    "bn_cumulative": (lambda i: BatchNorm2d(4, momentum=None, impl=i), lambda: nn.BatchNorm2d(4, momentum=None),
                      (6, 4, 3, 3)),
    "bn_not_affine": (lambda i: BatchNorm2d(4, affine=False, impl=i), lambda: nn.BatchNorm2d(4, affine=False),
                      (6, 4, 3, 3)),
    "bn_relu": (lambda i: BatchNormAct2d(4, impl=i), lambda: nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()),
                (6, 4, 3, 3)),
    "bn_gelu": (lambda i: BatchNormAct2d(4, activation="gelu", impl=i),
                lambda: nn.Sequential(nn.BatchNorm2d(4), nn.GELU()), (6, 4, 3, 3)),
    "renorm_warmup": (lambda i: BatchRenorm2d(4, impl=i), lambda: nn.BatchNorm2d(4), (6, 4, 3, 3)),
}


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("name", list(BF16_FAMILY))
def test_bf16_input_with_float32_parameters_gives_torchs_dtype_issue15_I(name, impl, train, autocast):
    """Issue 15 (testers, I): impl="reference" returned float32 where torch returns bf16 (bf16 input, float32
    parameters, with or without autocast). Right value: torch's twin's output dtype, values within bf16
    rounding, the input gradient in the input's dtype."""
    make, twin_make, shape = BF16_FAMILY[name]
    torch.manual_seed(0)
    ours, twin = make(impl).train(train), twin_make().train(train)
    x = (torch.randn(shape) * 2 + 1).bfloat16()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ya, yb = ours(xa), twin(xb)
    assert ya.dtype == yb.dtype == torch.bfloat16
    torch.testing.assert_close(ya.float(), yb.float(), rtol=0.02, atol=0.05)
    ya.float().square().sum().backward()
    assert xa.grad.dtype == torch.bfloat16
    if train and hasattr(twin, "running_mean"):
        torch.testing.assert_close(ours.running_mean, twin.running_mean, rtol=0.01, atol=0.01)
        assert ours.running_mean.dtype == torch.float32


def test_isinstance_of_torchs_batchnorm_classes_issue15_J():
    """Issue 15 (testers, J): isinstance(BatchNorm2d(4), nn.BatchNorm2d) was False, so the common init
    `if isinstance(m, nn.BatchNorm2d)` skipped ours. Right value: True, as for torch's own layer; the variants
    stay outside plain batch norm (convert_sync_batchnorm would drop their extra behaviour)."""
    import traintricks.memory as memory
    import traintricks.nn as tnn
    for d, (ours, theirs) in enumerate([(BatchNorm1d, nn.BatchNorm1d), (BatchNorm2d, nn.BatchNorm2d),
                                        (BatchNorm3d, nn.BatchNorm3d)], 1):
        m = ours(4)
        assert isinstance(m, theirs) and isinstance(m, nn.modules.batchnorm._BatchNorm)
        assert [c for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) if isinstance(m, c)] == [theirs]
        # our methods come first: our input check (and message) and forward, torch's class after our base
        mro = type(m).__mro__
        assert mro.index(tnn.batchnorm._BatchNorm) < mro.index(theirs) < mro.index(nn.modules.batchnorm._BatchNorm)
        assert type(m)._check_input_dim is tnn.batchnorm._BatchNorm._check_input_dim
        assert type(m).forward is tnn.batchnorm._BatchNorm.forward
        with pytest.raises(ValueError, match=rf"BatchNorm{d}d\(4\): expected"):
            m(torch.randn(2, 4, *([2] * (d + 2))))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm2d(4), nn.ReLU())
    for m in model.modules():                         # the usual init pattern now reaches our layer
        if isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.5)
            nn.init.constant_(m.bias, 0.25)
    assert torch.equal(model[1].weight, torch.full((4,), 0.5)) and torch.equal(model[1].bias, torch.full((4,), 0.25))
    for variant in (tnn.BatchRenorm2d(4), tnn.BatchNormAct2d(4), memory.InPlaceABN(4), tnn.BatchRenorm1d(4),
                    tnn.BatchNormAct1d(4), memory.InPlaceABN1d(4), BatchRenorm3d(4), tnn.BatchNormAct3d(4)):
        assert isinstance(variant, nn.modules.batchnorm._NormBase)
        assert not isinstance(variant, (nn.modules.batchnorm._BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d,
                                        nn.BatchNorm3d))
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(BatchNorm2d(4), tnn.BatchRenorm2d(4)))
    assert type(conv[0]) is nn.SyncBatchNorm and type(conv[1]) is tnn.BatchRenorm2d


def test_fx_optimization_fuse_leaves_ours_unfused_and_correct():
    """torch.fx.experimental.optimization.fuse matches exact types (type(m) is nn.BatchNorm2d) in a pattern
    list local to the function, so it leaves our layer in place (documented; fold_batchnorm folds it). The
    result is still right."""
    from torch.fx.experimental.optimization import fuse
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm2d(4)).eval()
    model[1].running_mean.normal_(), model[1].running_var.uniform_(0.5, 2)
    fused = fuse(model)
    assert any(type(m) is BatchNorm2d for m in fused.modules())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), model(x))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x))


FX_FAMILY = {
    "bn1d": lambda: BatchNorm1d(3), "bn1d_reference": lambda: BatchNorm1d(3, impl="reference"),
    "bn2d": lambda: BatchNorm2d(3), "bn3d": lambda: BatchNorm3d(3),
    "bn_cumulative": lambda: BatchNorm2d(3, momentum=None),
    "renorm": lambda: BatchRenorm2d(3, warmup_steps=1, r_ramp_steps=2, d_ramp_steps=2),
    "renorm_reference": lambda: BatchRenorm2d(3, warmup_steps=0, impl="reference"),
    "bn_relu": lambda: BatchNormAct2d(3), "bn_gelu": lambda: BatchNormAct2d(3, activation="gelu"),
    "inplace_abn": lambda: InPlaceABN(3), "inplace_abn1d": lambda: InPlaceABN1d(3),
}


@pytest.mark.parametrize("name", list(FX_FAMILY))
def test_fx_trace_keeps_train_eval_switchable_issue15_L(name):
    """Issue 15 (testers, L): a norm whose forward depends on self.training must be one call_module leaf, so
    gm.eval() switches it. Right value: gm(x) == layer.eval()(x) after tracing in training (and train too)."""
    torch.manual_seed(0)
    layer = FX_FAMILY[name]()
    shape = (6, 3) if "1d" in name else (6, 3, 4, 4) if "3d" not in name else (4, 3, 2, 3, 2)
    for _ in range(3):                                  # running estimates away from their initial values
        layer(torch.randn(shape) * 2 + 1)
    twin = copy.deepcopy(layer)
    gm = torch.fx.symbolic_trace(nn.Sequential(layer))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    x = torch.randn(shape) * 2 + 1
    torch.testing.assert_close(gm(x), twin(x))          # training: batch statistics, estimates move alike
    torch.testing.assert_close(layer.running_mean, twin.running_mean)
    gm.eval()
    torch.testing.assert_close(gm(x), twin.eval()(x))
    gm.train()
    torch.testing.assert_close(gm(x), twin.train()(x))
