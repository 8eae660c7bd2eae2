"""checkpoint_blocks and checkpoint (planned recomputation) on user-style models."""
from __future__ import annotations

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.surgery.user_models import BasicBlock, TinyViT, ViTBlock, resnet_tiny
from traintricks.memory import saved_bytes
from traintricks.surgery import (CheckpointedModule, NothingToChangeError, checkpoint, checkpoint_blocks, find_chain,
                                 remove_checkpointing)

F64 = torch.float64


class DropBlock(nn.Module):
    """A residual MLP block with dropout and batch norm: the recomputation must replay the mask and the buffers."""

    def __init__(self, d):
        super().__init__()
        self.fc, self.bn, self.drop = nn.Linear(d, d), nn.BatchNorm1d(d), nn.Dropout(0.3)

    def forward(self, x):
        return x + self.drop(F.gelu(self.bn(self.fc(x))))


class DropNet(nn.Module):
    def __init__(self, d=8, depth=4):
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.blocks = nn.ModuleList([DropBlock(d) for _ in range(depth)])
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def _grads_equal(model, ref, x, seed=0):
    torch.manual_seed(seed)
    model(x).square().sum().backward()
    torch.manual_seed(seed)
    ref(x).square().sum().backward()
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n, rtol=1e-12, atol=1e-12)
    for (n, a), b in zip(model.named_buffers(), ref.buffers()):
        assert torch.equal(a, b), n                           # running statistics updated once


def test_checkpoint_blocks_gradients_equal_with_batchnorm_and_dropout():
    torch.manual_seed(0)
    model = DropNet().to(F64)
    ref = copy.deepcopy(model)
    before = set(model.state_dict())
    report = checkpoint_blocks(model, "blocks.*")
    assert [p for p, _ in report.changed] == [f"blocks.{i}" for i in range(4)]
    assert isinstance(model.blocks[0], DropBlock) and isinstance(model.blocks[0], CheckpointedModule)
    assert set(model.state_dict()) == before
    model.load_state_dict(ref.state_dict(), strict=True)
    _grads_equal(model, ref, torch.randn(16, 3, dtype=F64))


def test_checkpoint_blocks_resnet_and_vit_gradients_and_memory():
    torch.manual_seed(0)
    model = resnet_tiny().to(F64)
    ref = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32, dtype=F64)
    report = checkpoint_blocks(model, "type:BasicBlock")
    assert len(report) == 8 and isinstance(model.layer1[0], BasicBlock)
    _grads_equal(model, ref, x)
    assert saved_bytes(lambda: model(x), exclude=model) < 0.7 * saved_bytes(lambda: ref(x), exclude=ref)
    vit = TinyViT().to(F64)
    vref = copy.deepcopy(vit)
    report = checkpoint_blocks(vit, "blocks.*")
    assert len(report) == 2 and any("inside recomputed ones" in n for n in report.notes)
    _grads_equal(vit, vref, torch.randn(2, 1, 16, 16, dtype=F64))


def test_checkpointed_module_runs_plainly_without_grad_and_is_undone():
    model = resnet_tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    checkpoint_blocks(model, "layer2.*")
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    assert torch.equal(copy.deepcopy(model)(x), ref)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded.layer2[0], CheckpointedModule) and torch.equal(loaded(x), ref)
    remove_checkpointing(model.layer2[0])
    assert type(model.layer2[0]) is BasicBlock
    with pytest.raises(ValueError, match="not recomputed"):
        remove_checkpointing(model.layer2[0])


def test_checkpoint_blocks_refusals():
    vit = TinyViT()
    with pytest.raises(NothingToChangeError, match="no forward of its own"):
        checkpoint_blocks(vit, "blocks")
    with pytest.raises(NothingToChangeError, match="modules of type Conv3d"):
        checkpoint_blocks(vit, nn.Conv3d)
    checkpoint_blocks(vit, "blocks.0")
    with pytest.raises(NothingToChangeError, match="already recomputed"):
        checkpoint_blocks(vit, "blocks.0")
    with pytest.raises(TypeError, match="nn.Module"):
        checkpoint_blocks("vit", "blocks.*")


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x, y):
        return self.fc(x) + y


def test_a_second_tensor_that_needs_a_gradient_is_refused_at_run_time():
    m = nn.Sequential()
    m.add_module("two", TwoInputs())
    checkpoint_blocks(m, "two")
    m = m.two
    x = torch.randn(3, 2)
    m(x, torch.randn(3, 2)).sum().backward()                     # a constant second input is fine
    with pytest.raises(TypeError, match="one tensor that needs a gradient"):
        m(x, torch.randn(3, 2, requires_grad=True))


def test_find_chain_finds_the_blocks():
    names = [n for n, _ in find_chain(resnet_tiny(), torch.randn(2, 3, 32, 32))]
    assert names == ["maxpool"] + [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)] + ["avgpool"]
    names = [n for n, _ in find_chain(TinyViT(depth=3), torch.randn(2, 1, 16, 16))]
    assert names == ["blocks.0", "blocks.1", "blocks.2", "norm"]


def test_checkpoint_to_a_budget_names_the_minimum_then_fits_it():
    torch.manual_seed(0)
    model = resnet_tiny().to(F64)
    ref = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32, dtype=F64)
    with pytest.raises(ValueError, match=r"least feasible budget .* is \d+ bytes") as info:
        checkpoint(model, x, 1000)
    assert not any(isinstance(m, CheckpointedModule) for m in model.modules())
    minimum = int(re.search(r"is (\d+) bytes", str(info.value)).group(1))
    report = checkpoint(model, x, minimum)
    assert report.predicted_bytes_after <= minimum < report.predicted_bytes_before
    assert report.chain[1] == "layer1.0" and len(report) >= 1
    assert all(isinstance(model.get_submodule(p), CheckpointedModule) for p, _ in report.changed)
    _grads_equal(model, ref, x)
    assert saved_bytes(lambda: model(x), exclude=model) < saved_bytes(lambda: ref(x), exclude=ref)


def test_checkpoint_with_a_generous_budget_has_nothing_to_recompute():
    model = TinyViT()
    with pytest.raises(NothingToChangeError, match="already fit"):
        checkpoint(model, torch.randn(2, 1, 16, 16), 2**40)
    assert not any(isinstance(m, CheckpointedModule) for m in model.modules())
    with pytest.raises(ValueError, match="non-negative"):
        checkpoint(model, torch.randn(2, 1, 16, 16), -1)


def test_checkpoint_vit_blocks_at_the_least_budget():
    torch.manual_seed(0)
    model = TinyViT(depth=4).to(F64)
    ref = copy.deepcopy(model)
    x = torch.randn(4, 1, 16, 16, dtype=F64)
    with pytest.raises(ValueError, match="least feasible budget") as info:
        checkpoint(model, x, 0)
    report = checkpoint(model, x, int(re.search(r"is (\d+) bytes", str(info.value)).group(1)))
    assert report.chain == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "norm"]
    assert any(isinstance(m, ViTBlock) and isinstance(m, CheckpointedModule) for m in model.modules())
    _grads_equal(model, ref, x)


def test_checkpointed_model_compiles():
    model = DropNet(depth=2).eval()
    checkpoint_blocks(model, "blocks.*")
    x = torch.randn(4, 3)
    ref = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    out = compiled(x)                                           # with grad on: through the recomputation
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert model.blocks[0].fc.weight.grad is not None


def test_timm_vit_blocks_checkpoint():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
    report = checkpoint_blocks(model, "blocks.*")
    assert len(report) == len(model.blocks)
    model(torch.randn(1, 3, 32, 32)).sum().backward()
