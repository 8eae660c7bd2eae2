"""convert_norms, sync_batchnorm and to_inplace_abn on user-style models (tests/surgery/user_models.py and models
written here in yet another style)."""
from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traintricks.nn as ttnn
from tests.surgery.user_models import LeakyNet, TinyViT, resnet_tiny
from traintricks.memory import InPlaceABN, InPlaceABN1d
from traintricks.surgery import NothingToChangeError, convert_norms, sync_batchnorm, to_inplace_abn


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine parameters and running statistics in every norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) \
                        and t.is_floating_point():
                    r = torch.rand(t.shape, generator=g, dtype=t.dtype)
                    t.copy_(r + 0.5 if name in ("weight", "running_var") else r - 0.5)
    return model


class GNNet(nn.Module):
    """A detector-style backbone with nn.GroupNorm(32, C) after each conv, written with a functional forward."""

    def __init__(self):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 64, 3, padding=1), nn.GroupNorm(32, 64)
        self.c2, self.g2 = nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(32, 64)
        self.out = nn.Linear(64, 5)

    def forward(self, x):
        x = F.relu(self.g1(self.c1(x)))
        x = F.relu(self.g2(self.c2(x))) + x
        return self.out(x.mean((2, 3)))


class TabularMLP(nn.Module):
    """An MLP for tabular data with LayerNorm over (N, C) features: a channel norm there."""

    def __init__(self):
        super().__init__()
        self.fc1, self.ln = nn.Linear(6, 16), nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.ln(self.fc1(x))))


# -------------------------------------------------------------------------------------------------- convert_norms

def test_torch_batchnorm_to_our_batchnorm_gives_equal_eval_outputs_and_keeps_keys():
    model = _randomize(resnet_tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    ref, before = model(x), model.state_dict()
    old_weight = model.layer1[0].bn1.weight
    report = convert_norms(model, "batchnorm")
    assert len(report) == 20 and not report.skipped
    assert type(model.layer1[0].bn1) is ttnn.BatchNorm2d and not model.layer1[0].bn1.training
    assert model.layer1[0].bn1.weight is old_weight                  # the same Parameter: optimizers keep it
    assert torch.equal(model(x), ref)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    fresh = resnet_tiny()
    convert_norms(fresh, "batchnorm")
    fresh.load_state_dict(before, strict=True)                        # an old checkpoint loads into the new model
    assert torch.equal(fresh.eval()(x), ref)


def test_batchnorm_to_batchrenorm_copies_running_statistics_and_is_equal_in_eval():
    model = _randomize(resnet_tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    rm = model.layer2[0].downsample[1].running_mean.clone()
    report = convert_norms(model, "batchrenorm")
    bn = model.layer2[0].downsample[1]
    assert isinstance(bn, ttnn.BatchRenorm2d) and torch.equal(bn.running_mean, rm)
    assert "running statistics copied" in dict(report.changed)["layer2.0.downsample.1"]
    torch.testing.assert_close(model(x), ref)


def test_groupnorm_32_to_our_groupnorm_keeps_the_groups_and_is_equal():
    model = _randomize(GNNet())
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    report = convert_norms(model, "groupnorm")
    assert len(report) == 2
    assert type(model.g1) is ttnn.GroupNorm and model.g1.num_groups == 32
    torch.testing.assert_close(model(x), ref)
    convert_norms(model, "groupnorm", groups=16)                      # an option overrides
    assert model.g1.num_groups == 16


def test_transformer_layernorm_is_refused_for_channel_norms_with_the_reason():
    model = TinyViT()
    with pytest.raises(NothingToChangeError, match="normalizes the last dimension"):
        convert_norms(model, "groupnorm")
    assert type(model.blocks[0].norm1) is nn.LayerNorm                # nothing changed


def test_transformer_layernorm_converts_to_our_layernorm_or_none():
    model = _randomize(TinyViT())
    x = torch.randn(2, 1, 16, 16)
    ref = model(x)
    report = convert_norms(model, "layernorm")
    assert len(report) == 5 and type(model.norm) is ttnn.LayerNorm
    torch.testing.assert_close(model(x), ref)
    report = convert_norms(model, "none", where="blocks.*")
    assert [p for p, _ in report.changed] == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2"]
    assert isinstance(model.blocks[0].norm1, nn.Identity) and type(model.norm) is ttnn.LayerNorm


def test_layernorm_over_features_of_a_2d_input_is_a_channel_norm_with_example_inputs():
    model = TabularMLP()
    with pytest.raises(NothingToChangeError, match="example_inputs"):
        convert_norms(model, "batchnorm")
    report = convert_norms(model, "batchnorm", example_inputs=torch.randn(4, 6))
    assert len(report) == 1 and type(model.ln) is ttnn.BatchNorm1d
    model.train()(torch.randn(4, 6)).sum().backward()
    assert model.ln.weight.grad is not None


def test_where_selects_which_norms_and_dtype_device_and_mode_are_kept():
    model = resnet_tiny().double().train()
    report = convert_norms(model, "groupnorm", where="layer4.*", groups=4)
    assert {p.split(".")[0] for p, _ in report.changed} == {"layer4"}
    assert type(model.bn1) is nn.BatchNorm2d
    gn = model.layer4[0].bn1
    assert isinstance(gn, ttnn.GroupNorm) and gn.num_groups == 4 and gn.training
    assert gn.weight.dtype == torch.float64
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).sum().backward()
    assert gn.weight.grad is not None
    assert any("mean 0, variance 1" in w for _, w in convert_norms(model, "batchnorm", where="layer4.*").changed)


def test_fused_norms_keep_or_refuse_their_activation():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), ttnn.BatchNormAct2d(8, activation="leaky_relu", negative_slope=0.2))
    with pytest.raises(NothingToChangeError, match="activation would be lost"):
        convert_norms(model, "groupnorm")
    report = convert_norms(model, "inplace_abn")
    assert isinstance(model[1], InPlaceABN) and model[1].slope == 0.2 and len(report) == 1
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    with pytest.raises(NothingToChangeError, match="would add one"):
        convert_norms(plain, "batchnorm_act")


def test_convert_norms_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        convert_norms("resnet", "batchnorm")
    with pytest.raises(ValueError, match="unknown normalization 'batchnrom'"):
        convert_norms(resnet_tiny(), "batchnrom")
    with pytest.raises(TypeError, match="unknown option"):
        convert_norms(resnet_tiny(), "groupnorm", group=4)
    with pytest.raises(NothingToChangeError, match="no normalization layers"):
        convert_norms(nn.Sequential(nn.Linear(2, 2)), "groupnorm")
    with pytest.raises(NothingToChangeError, match="already a BatchNorm2d"):
        convert_norms(nn.Sequential(ttnn.BatchNorm2d(3)), "batchnorm")


def test_converted_model_deepcopies_and_evaluates():
    model = _randomize(resnet_tiny())
    convert_norms(model, "batchrenorm")
    copied = copy.deepcopy(model).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(copied(x), model.eval()(x))


# -------------------------------------------------------------------------------------------------- sync_batchnorm

def test_sync_batchnorm_converts_torch_layers_keeping_state_and_switches_ours():
    model = _randomize(resnet_tiny())
    model.layer1[0].bn1 = _randomize(nn.Sequential(ttnn.BatchNorm2d(8)))[0]
    before = model.state_dict()
    weight = model.bn1.weight
    x = torch.randn(4, 3, 32, 32)
    ref = copy.deepcopy(model)
    report = sync_batchnorm(model)
    assert len(report) == 20
    assert type(model.bn1) is ttnn.BatchNorm2d and model.bn1.sync and model.bn1.weight is weight
    assert model.layer1[0].bn1.sync and dict(report.changed)["layer1.0.bn1"] == "BatchNorm2d: sync = True"
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(model(x), ref(x))                     # one process: plain batch norm
    for a, b in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b)
    with pytest.raises(NothingToChangeError, match="already synchronized"):
        sync_batchnorm(model)


def test_sync_batchnorm_torch_layers_is_convert_sync_batchnorm():
    model = _randomize(resnet_tiny())
    theirs = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    sync_batchnorm(model, torch_layers=True)
    assert type(model.layer3[1].bn2) is nn.SyncBatchNorm
    ours, ref = model.state_dict(), theirs.state_dict()
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), theirs.eval()(x))


def test_sync_batchnorm_refuses_layers_that_cannot_synchronize_before_changing_any():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ttnn.BatchRenorm2d(4))
    with pytest.raises(ValueError, match=r"2 \(BatchRenorm2d\)"):
        sync_batchnorm(model)
    assert type(model[1]) is nn.BatchNorm2d
    with pytest.raises(NothingToChangeError, match="batch norms"):
        sync_batchnorm(TinyViT())
    with pytest.raises(ValueError, match="process_group"):
        sync_batchnorm(resnet_tiny(), process_group=object())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    code = 0
    try:
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
        model.double()
        sync_batchnorm(model)
        y = model(x[4 * rank:4 * rank + 4])
        y.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
        if rank == 0:
            torch.save({"y": y.detach(), "grads": grads, "rm": model[1].running_mean.clone()}, out)
        dist.destroy_process_group()
    except BaseException:                                    # noqa: BLE001 -- reported through the exit code
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code)


def test_synchronized_torch_batchnorm_on_two_cpu_processes_equals_one_process_with_the_whole_batch(tmp_path):
    import torch.multiprocessing as mp
    out = str(tmp_path / "r0.pt")
    ctx = mp.start_processes(_sync_worker, args=(_free_port(), out), nprocs=2, start_method="spawn", join=False)
    while not ctx.join():
        pass
    got = torch.load(out)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double()
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    y = model(x)
    y.square().sum().backward()
    torch.testing.assert_close(got["y"], y[:4].detach())
    torch.testing.assert_close(got["rm"], model[1].running_mean)
    for g, p in zip(got["grads"], model.parameters()):
        torch.testing.assert_close(g, p.grad)


# -------------------------------------------------------------------------------------------------- to_inplace_abn

def test_to_inplace_abn_replaces_module_pairs_exactly_in_eval_and_skips_the_functional_one():
    model = _randomize(LeakyNet()).eval()
    x = torch.randn(2, 1, 8, 8)
    ref, before = model(x), model.state_dict()
    report = to_inplace_abn(model)
    assert [p for p, _ in report.changed] == ["features.1", "features.4"]
    assert isinstance(model.features[1], InPlaceABN) and model.features[4].slope == 0.1
    assert isinstance(model.features[2], nn.Identity) and type(model.bn) is nn.BatchNorm2d
    assert "functional leaky_relu" in dict(report.skipped)["bn"]
    assert torch.equal(model(x), ref)
    assert set(model.state_dict()) == set(before)
    fresh = LeakyNet()
    to_inplace_abn(fresh)
    fresh.load_state_dict(before, strict=True)
    assert torch.equal(fresh.eval()(x), ref)
    assert torch.equal(copy.deepcopy(model).eval()(x), ref)


def test_to_inplace_abn_gradients_equal_the_original_pairs_in_training():
    torch.manual_seed(0)
    model = _randomize(LeakyNet()).double()
    ref = copy.deepcopy(model)
    to_inplace_abn(model)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    model(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)
    for a, b in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b)


def test_to_inplace_abn_refuses_relu_pairs_as_not_invertible():
    with pytest.raises(NothingToChangeError, match="needs an invertible activation"):
        to_inplace_abn(resnet_tiny())


class SharedAct(nn.Module):
    """One LeakyReLU module applied after two batch norms (a shared activation, as torchvision shares self.relu)."""

    def __init__(self, also_on_sum=False):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.c2, self.b2 = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.act, self.also_on_sum = nn.LeakyReLU(0.2), also_on_sum

    def forward(self, x):
        h = self.act(self.b1(self.c1(x)))
        h2 = self.act(self.b2(self.c2(h)))
        return self.act(h2 + h) if self.also_on_sum else h2


def test_to_inplace_abn_shared_activation_module():
    model = _randomize(SharedAct()).eval()
    x = torch.randn(2, 2, 5)
    ref = model(x)
    assert len(to_inplace_abn(model)) == 2
    assert isinstance(model.b1, InPlaceABN1d) and isinstance(model.act, nn.Identity)
    assert torch.equal(model(x), ref)
    with pytest.raises(NothingToChangeError, match="also applied to the output of add"):
        to_inplace_abn(SharedAct(also_on_sum=True))


def test_to_inplace_abn_skips_3d_and_checks_its_argument():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.LeakyReLU())
    with pytest.raises(NothingToChangeError, match="no 3-D InPlaceABN"):
        to_inplace_abn(model)
    with pytest.raises(TypeError, match="nn.Module"):
        to_inplace_abn(None)


def test_surgeries_leave_a_model_torch_compile_runs():
    model = _randomize(LeakyNet())
    to_inplace_abn(model)
    convert_norms(model, "batchrenorm", where="bn")
    x = torch.randn(2, 1, 8, 8)
    ref = model.eval()(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), ref)


def test_timm_model_norms_convert():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = model(x)
    report = convert_norms(model, "batchnorm")
    assert len(report) == 20
    torch.testing.assert_close(model(x), ref)
    sync_batchnorm(model)


class BNAct(nn.BatchNorm2d):
    """A third-party norm + activation subclass of torch's BatchNorm2d with its own forward (as timm's)."""

    def forward(self, x):
        return F.relu(super().forward(x))


def test_norms_with_their_own_forward_are_left_with_the_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4))
    with pytest.raises(NothingToChangeError, match="has its own forward"):
        convert_norms(model, "groupnorm")
    with pytest.raises(NothingToChangeError, match="its own forward"):
        sync_batchnorm(model)
    assert type(model[1]) is BNAct


def test_the_model_itself_and_hooked_norms_are_not_replaced():
    with pytest.raises(NothingToChangeError, match="the model itself is a norm"):
        convert_norms(nn.BatchNorm2d(3), "groupnorm")
    model = nn.Sequential(nn.BatchNorm2d(3))
    model[0].register_forward_hook(lambda *a: None)
    with pytest.raises(NothingToChangeError, match="forward hooks"):
        convert_norms(model, "groupnorm")


class TwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.act = nn.BatchNorm1d(3), nn.LeakyReLU(0.1)

    def forward(self, x):
        y = self.bn(x)
        return self.act(y) + y


def test_to_inplace_abn_skips_a_norm_whose_output_is_used_twice():
    with pytest.raises(NothingToChangeError, match="used 2 times"):
        to_inplace_abn(TwoUses())
