import pytest
import torch

from traintricks.data import Compose, RandomCrop, RandomFlip, TensorLoader


def test_crop_matches_per_example_shift():
    x = torch.randn(16, 3, 9, 7)
    g = torch.Generator().manual_seed(3)
    out = RandomCrop(2)(x, g)
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (16,), generator=g)
    dx = torch.randint(0, 5, (16,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 9, dx[i]:dx[i] + 7])


def test_crop_zero_padding_is_identity_and_negative_rejected():
    x = torch.randn(4, 1, 5, 5)
    assert torch.equal(RandomCrop(0)(x), x)
    with pytest.raises(ValueError, match="padding"):
        RandomCrop(-1)


def test_flip_probability_and_extremes():
    x = torch.randn(2000, 1, 4, 4)
    assert torch.equal(RandomFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandomFlip(0.0)(x), x)
    out = RandomFlip(0.3)(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1).float().mean().item()
    assert abs(flipped - 0.3) < 0.04        # ~4 standard deviations at n=2000
    with pytest.raises(ValueError):
        RandomFlip(1.5)


def test_loader_covers_each_example_once_per_epoch_and_replays_by_epoch():
    x = torch.arange(103).float().unsqueeze(1)
    y = torch.arange(103)
    loader = TensorLoader(x, y, 10, shuffle=True, seed=5)
    seen = torch.cat([yb for _, yb in loader])
    assert sorted(seen.tolist()) == list(range(103)) and len(loader) == 11
    first = seen.clone()
    loader.set_epoch(1)
    second = torch.cat([yb for _, yb in loader])
    loader.set_epoch(0)
    again = torch.cat([yb for _, yb in loader])
    assert not torch.equal(first, second) and torch.equal(first, again)
    dl = TensorLoader(x, y, 10, shuffle=True, drop_last=True)
    assert len(dl) == 10 and all(len(b) == 10 for _, b in dl)


def test_loader_applies_transform_and_memory_format():
    x = torch.randn(8, 3, 6, 6)
    loader = TensorLoader(x, torch.zeros(8), 4, transform=Compose([RandomFlip(1.0)]),
                          memory_format=torch.channels_last)
    xb, _ = next(iter(loader))
    assert torch.equal(xb, x[:4].flip(-1)) and xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        TensorLoader(x, torch.zeros(7), 4)
