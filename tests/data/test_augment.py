import pytest
import torch

from traintricks.data import Compose, RandomCrop, RandomFlip, TensorLoader


def test_crop_matches_per_example_shift():
    x = torch.randn(16, 3, 9, 7)
    g = torch.Generator().manual_seed(3)
    out = RandomCrop(2)(x, generator=g)
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
    out = RandomFlip(0.3)(x, generator=torch.Generator().manual_seed(0))
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


# ---------------------------------------------------------------- translate, cutout, erasing, mixup, cutmix
from traintricks.data.augment import CutMix, Cutout, Mixup, RandomErasing, RandomTranslate  # noqa: E402


def test_translate_shifts_whole_images_within_range():
    x = torch.zeros(50, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    y = RandomTranslate(2)(x, generator=torch.Generator().manual_seed(0))
    pos = y.flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert (y.flatten(1).sum(1) == 1).all() and dy.abs().max() == 2 and dx.abs().max() == 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 10


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border():
    x = torch.ones(200, 2, 16, 16)
    y = Cutout(6)(x, generator=torch.Generator().manual_seed(0))
    zeros = (y == 0).all(1)                     # same square on every channel
    assert torch.equal((y == 0).any(1), zeros)
    counts = zeros.flatten(1).sum(1)
    assert counts.max() == 36 and counts.min() >= 9 and (counts < 36).any()   # clipped squares are smaller
    rows, cols = zeros.any(2), zeros.any(1)
    assert (rows.sum(1) * cols.sum(1) == counts).all()   # a rectangle


def test_random_erasing_rectangles_stay_in_area_and_ratio_ranges():
    x = torch.zeros(400, 1, 20, 20)
    y = RandomErasing(p=0.5, scale=(0.05, 0.2), ratio=(0.5, 2.0))(x, generator=torch.Generator().manual_seed(0))
    erased = (y != 0).flatten(1).sum(1)
    frac = (erased > 0).float().mean().item()
    assert 0.4 < frac < 0.6
    area = erased[erased > 0].float() / 400
    assert area.min() >= 0.03 and area.max() <= 0.25    # rounding of the sides widens the range slightly


def test_mixup_soft_targets_and_inputs_use_the_same_lambda():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 4, 4)
    y = torch.randint(0, 5, (32,))
    xm, ym = Mixup(5, alpha=0.4)(x, y, g)
    assert ym.shape == (32, 5) and torch.allclose(ym.sum(1), torch.ones(32))
    g = torch.Generator().manual_seed(0)
    lam, j = Mixup(5, alpha=0.4)._lam_perm(32, g)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[j])
    torch.testing.assert_close(ym[torch.arange(32), y] >= min(lam, 1 - lam) - 1e-6, torch.ones(32, dtype=torch.bool))
    lams = [Mixup(5, alpha=0.2)._lam_perm(4, torch.Generator().manual_seed(s))[0] for s in range(400)]
    mean = sum(lams) / len(lams)
    assert abs(mean - 0.5) < 0.05 and sum(min(v, 1 - v) < 0.1 for v in lams) > 150   # Beta(0.2, 0.2): U-shaped


def test_cutmix_targets_follow_the_pasted_area():
    g = torch.Generator().manual_seed(1)
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 10, 10).contiguous()
    y = torch.arange(8)
    xm, ym = CutMix(8, alpha=1.0)(x, y, g)
    own = (xm == x).flatten(1).float().mean(1)
    torch.testing.assert_close(ym[torch.arange(8), y], own)
    assert torch.allclose(ym.sum(1), torch.ones(8))


def test_loader_with_mixup_yields_soft_targets_and_training_accepts_them():
    from tests.conftest import PRECISION
    from traintricks.config import load_config
    from traintricks.training import build_trainer
    cfg = load_config(overrides=["data.name=digits", "epochs=3", 'data.augment=[{name = "cutout", size = 3}, "mixup"]',
                                 "model.widths=[8, 16]", "model.blocks=[1, 1]", "batch_size=64", "lr=0.1",
                                 "callbacks=[]", f"precision={PRECISION}", "data.augment_from_epoch=0"])
    trainer = build_trainer(cfg, progress=False)
    xb, yb = next(iter(trainer.train_loader))
    assert yb.shape == (64, 10) and yb.dtype == torch.float32
    summary = trainer.fit()
    assert summary["test_accuracy"] > 0.5


AUGS = [lambda: RandomCrop(2), lambda: RandomFlip(0.5), lambda: RandomTranslate(1), lambda: Cutout(3),
        lambda: RandomErasing(p=1.0), lambda: Mixup(10, alpha=0.4), lambda: CutMix(10),
        lambda: Compose([RandomFlip(), Cutout(2)]), lambda: Compose([RandomCrop(1), Mixup(10)])]


@pytest.mark.parametrize("make", AUGS)
def test_regression_issue15_item10_every_augmentation_is_the_loaders_transform_directly(make):
    """One convention, aug(x, y=None, generator=None): the loader calls transform(x, y, generator=g) and gets
    (x, y) back; every augmentation works there on its own, not only inside Compose."""
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, 8, 8), torch.randint(0, 10, (20,))
    aug = make()
    loader = TensorLoader(x, y, 8, shuffle=True, seed=1, transform=aug)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    xb, yb = batches[0]
    # the same batch by a direct call with the loader's generator (an epoch replays exactly)
    g = torch.Generator().manual_seed(1 * 1_000_003 + 0)
    order = torch.randperm(20, generator=g)
    ex, ey = aug(x[order[:8]], y[order[:8]], generator=g)
    assert torch.equal(xb, ex) and torch.equal(yb, ey)
    if getattr(aug, "mixes_labels", False):
        assert yb.shape == (8, 10) and torch.allclose(yb.sum(1), torch.ones(8))
        with pytest.raises(ValueError, match="mixes labels"):
            aug(x)
    else:
        assert torch.equal(yb, y[order[:8]])
        out = aug(x, generator=torch.Generator().manual_seed(0))       # images only: x back
        assert isinstance(out, torch.Tensor) and out.shape == x.shape


def test_calling_conventions_give_clear_errors():
    x = torch.randn(4, 1, 5, 5)
    with pytest.raises(TypeError, match="generator went into y"):
        RandomFlip()(x, torch.Generator())
    with pytest.raises(TypeError, match="must return \\(x, y\\)"):
        next(iter(TensorLoader(x, torch.zeros(4), 2, transform=lambda x, y, generator=None: x)))


# ---- alternating flip (Jordan 2024, arXiv:2404.00498) ----

def _mirrored(out, x):
    """Which examples of ``out`` are the mirror of ``x`` (and not equal to it): bool (N,)."""
    return (out == x.flip(-1)).flatten(1).all(1) & ~(out == x).flatten(1).all(1)


def test_alternating_flip_mirrors_each_example_once_in_two_consecutive_epochs():
    from traintricks.data import AlternatingFlip
    x = torch.randn(4000, 1, 3, 5)
    idx = torch.arange(4000)
    a = AlternatingFlip()
    first = _mirrored(a(x, index=idx, epoch=0), x)
    for e in range(1, 5):
        now = _mirrored(a(x, index=idx, epoch=e), x)
        assert torch.equal(now, ~first if e % 2 else first), e     # b_i xor (e mod 2)
    # about half start mirrored: a binomial(4000, 1/2) count, within ~4 standard deviations (31.6 each)
    assert abs(first.float().sum().item() - 2000) < 130
    # a fixed function of (seed, index, epoch): another seed draws other bits; the generator plays no part
    assert torch.equal(a(x, index=idx, epoch=3, generator=torch.Generator().manual_seed(9)),
                       AlternatingFlip(0)(x, index=idx, epoch=3))
    other = _mirrored(AlternatingFlip(seed=1)(x, index=idx, epoch=0), x)
    assert 0.4 < (other ^ first).float().mean().item() < 0.6
    # an example's flip depends on its index, not on its place in the batch
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_mirrored(a(x[perm], index=perm, epoch=0), x[perm]), first[perm])


def test_alternating_flip_refuses_a_call_without_index_or_epoch():
    from traintricks.data import AlternatingFlip
    x = torch.randn(4, 1, 2, 2)
    with pytest.raises(TypeError, match="index=idx, epoch=e"):
        AlternatingFlip()(x)
    with pytest.raises(TypeError, match="dataset indices and the epoch"):
        AlternatingFlip()(x, index=torch.arange(4))
    with pytest.raises(ValueError, match=r"one dataset index per example of the batch x \(x.shape\[0\] = 4: "
                                         r"shape \(4,\)\), got shape \(3,\); x is a batch"):
        AlternatingFlip()(x, index=torch.arange(3), epoch=0)
    with pytest.raises(ValueError, match=r"x.shape\[0\] = 3.*not a single example"):     # one (C, H, W) image
        AlternatingFlip()(torch.randn(3, 4, 4), index=torch.tensor([0]), epoch=0)
    with pytest.raises(TypeError, match="integer dataset indices, got dtype torch.float32"):
        AlternatingFlip()(x, index=torch.tensor([0.5, 0.7, 1.0, 2.0]), epoch=0)
    y = torch.arange(4)
    out, yy = AlternatingFlip()(x, y, index=torch.arange(4), epoch=1)
    assert yy is y and out.shape == x.shape


def test_compose_passes_index_and_epoch_to_the_augmentations_that_use_them_only():
    from traintricks.data import AlternatingFlip
    seen = []

    def plain(x, y=None, generator=None):          # a user's transform of the plain convention
        seen.append(len(x))
        return x if y is None else (x, y)

    aug = Compose([plain, AlternatingFlip(), RandomCrop(0)])
    assert aug.uses_index and not Compose([plain, RandomFlip()]).uses_index
    x, idx = torch.randn(6, 1, 2, 3), torch.arange(10, 16)
    out = aug(x, index=idx, epoch=1)
    assert seen == [6] and torch.equal(out, AlternatingFlip()(x, index=idx, epoch=1))


def test_loader_shows_each_example_plain_and_mirrored_in_consecutive_epochs():
    """Through TensorLoader (shuffled, augmentation from epoch 2, dropped last batch, two ranks): each example
    is seen in one orientation at epoch e and the other at e + 1, by its dataset index."""
    from traintricks.data import AlternatingFlip
    n = 50
    x = torch.randn(n, 1, 3, 4)
    for rank, world in ((0, 1), (1, 2)):
        loader = TensorLoader(x, torch.arange(n), 6, shuffle=True, seed=4, transform=Compose([AlternatingFlip()]),
                              transform_from_epoch=2, rank=rank, world_size=world)
        views = []
        for epoch in range(2, 5):
            loader.set_epoch(epoch)
            state = {}
            for xb, yb in loader:
                m = _mirrored(xb, x[yb])
                assert torch.equal(xb[~m], x[yb][~m])                   # the rest untouched
                state.update(zip(yb.tolist(), m.tolist()))
            views.append(state)
        assert len(views[0]) > n // (2 * world)
        for a, b in zip(views, views[1:]):
            common = a.keys() & b.keys()
            assert common and all(a[i] != b[i] for i in common)
    loader.set_epoch(1)                                                 # before transform_from_epoch: plain
    assert all(torch.equal(xb, x[yb]) for xb, yb in loader)


def test_loader_without_set_epoch_starts_a_new_epoch_at_each_pass():
    """Found by a new user: in a loop of their own that never called set_epoch, a shuffled TensorLoader gave the
    same order (and the same flips) every epoch. Each new pass is now the next epoch, as a DataLoader reshuffles;
    once set_epoch is called the caller numbers the epochs (the trainer does, every epoch)."""
    from traintricks.data import AlternatingFlip
    x = torch.randn(40, 1, 2, 3)
    loader = TensorLoader(x, torch.arange(40), 8, shuffle=True, seed=1, transform=Compose([AlternatingFlip()]))
    passes = [[(xb, yb) for xb, yb in loader] for _ in range(3)]
    orders = [torch.cat([yb for _, yb in p]) for p in passes]
    assert loader.epoch == 2 and not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    for e, p in enumerate(passes):                      # pass e is epoch e: its order and its flips
        ref = TensorLoader(x, torch.arange(40), 8, shuffle=True, seed=1, transform=Compose([AlternatingFlip()]))
        ref.set_epoch(e)
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(p, ref, strict=True))
    state = [_mirrored(torch.cat([xb for xb, _ in p]), x[o]) for p, o in zip(passes, orders)]
    flips = [dict(zip(o.tolist(), m.tolist())) for o, m in zip(orders, state)]
    assert all(flips[0][i] != flips[1][i] != flips[2][i] for i in range(40))
    loader.set_epoch(0)                                 # explicit epochs: repeated passes repeat the epoch
    again = [torch.cat([yb for _, yb in loader]) for _ in range(2)]
    assert torch.equal(again[0], orders[0]) and torch.equal(again[1], orders[0]) and loader.epoch == 0
