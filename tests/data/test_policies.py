"""Augmentation policies (traintricks.data.policies): each operation's effect on known images, agreement with
Pillow's definitions on uint8 images, identity at magnitude 0, seeding, per-image independence, value ranges."""
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from traintricks.data import AUGMENTATIONS, AugMix, AutoAugment, RandAugment, TrivialAugment, load_data
from traintricks.data.policies import (OPS, POLICIES, RANDAUGMENT_OPS, RANGES, SIGNED, apply_ops, functional,
                                       op_values)
from traintricks.training import build_trainer, run
from traintricks.training.recipe import build_augment

POLICY_CLASSES = [lambda: AutoAugment("imagenet"), lambda: AutoAugment("cifar10"), lambda: AutoAugment("svhn"),
                  lambda: RandAugment(num_ops=2, magnitude=15), TrivialAugment, AugMix]


def images(n=6, c=3, h=17, w=19, seed=0, lo=0, hi=256):
    """uint8 images with structure (a bright band, a dark corner) and noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(lo, hi, (n, c, h, w), dtype=torch.uint8, generator=g)
    x[:, :, :, :3] = min(hi - 1, 200)
    x[:, :, :4, -4:] = lo
    return x


def to_pil(img):
    a = img.permute(1, 2, 0).numpy()
    return Image.fromarray(a[:, :, 0], "L") if a.shape[2] == 1 else Image.fromarray(a, "RGB")


def from_pil(im, c):
    a = torch.from_numpy(np.asarray(im).copy())
    return a.unsqueeze(0) if c == 1 else a.permute(2, 0, 1)


# ------------------------------------------------------------------------------------------ known images
def test_rotate_90_of_a_ramp_is_rot90_counterclockwise():
    ramp = torch.arange(16, dtype=torch.uint8).repeat(16, 1).view(1, 1, 16, 16) * 16      # x[i, j] = 16 j
    out = functional["rotate"](ramp, 90.0)
    assert torch.equal(out, torch.rot90(ramp, 1, dims=(2, 3)))       # the left column goes to the bottom
    assert torch.equal(out[0, 0, -1], torch.zeros(16, dtype=torch.uint8))
    assert torch.equal(functional["rotate"](ramp, -90.0), torch.rot90(ramp, -1, dims=(2, 3)))
    f = ramp.float() / 255
    assert torch.equal(functional["rotate"](f, 180.0), f.flip(2, 3))


def test_posterize_keeps_the_top_bits():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    for bits in range(0, 9):
        mask = (0xFF << (8 - bits)) & 0xFF
        assert torch.equal(functional["posterize"](x, bits), x & mask), bits


def test_solarize_inverts_levels_at_or_above_the_threshold():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    out = functional["solarize"](x, 100)
    assert torch.equal(out[x < 100], x[x < 100]) and torch.equal(out[x >= 100], 255 - x[x >= 100])
    assert torch.equal(functional["solarize"](x, 256), x)           # threshold 256: nothing inverted
    assert torch.equal(functional["solarize"](x, 0), 255 - x)


def test_equalize_makes_the_histogram_flat():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 1, 64, 64, generator=g) ** 3 * 255).round().to(torch.uint8)   # skewed to dark
    out = functional["equalize"](x).flatten().float()
    before = x.flatten().float()
    for level in range(31, 256, 32):
        assert abs((out <= level).float().mean().item() - (level + 1) / 256) < 0.03, level
    assert (before <= 63).float().mean() > 0.6                                  # it was not flat


def test_autocontrast_stretches_each_channel_to_0_1():
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 0.4 * torch.rand(3, 3, 8, 8, generator=g)
    out = functional["autocontrast"](x)
    assert torch.allclose(out.amin((2, 3)), torch.zeros(3, 3)) and torch.allclose(out.amax((2, 3)), torch.ones(3, 3))
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    assert torch.allclose(out, (x - lo) / (hi - lo), atol=1e-6)
    flat = torch.full((1, 1, 4, 4), 0.3)
    assert torch.equal(functional["autocontrast"](flat), flat)


def test_translate_shifts_by_whole_pixels_and_fills():
    x = images(2, 1)
    out = functional["translate_x"](x, 3)
    assert torch.equal(out[..., 3:], x[..., :-3]) and (out[..., :3] == 0).all()
    out = functional["translate_y"](x, -2, fill=1.0)
    assert torch.equal(out[..., :-2, :], x[..., 2:, :]) and (out[..., -2:, :] == 255).all()


@pytest.mark.parametrize("s", [0.3, -0.45])
def test_shear_moves_a_pixel_where_the_matrix_says(s):
    x = torch.zeros(1, 1, 15, 15)
    y0, x0 = 11, 7
    x[0, 0, y0, x0] = 1.0
    out = functional["shear_x"](x, s)[0, 0]
    # PIL's map: output pixel (p, q) reads input column floor(p + 0.5 + s (q + 0.5)), row q
    expect = torch.zeros(15, 15)
    for p in range(15):
        if int(np.floor(p + 0.5 + s * (y0 + 0.5))) == x0:
            expect[y0, p] = 1.0
    assert expect.sum() >= 1 and torch.equal(out, expect)
    out = functional["shear_y"](x.transpose(2, 3), s)[0, 0]
    assert torch.equal(out, expect.T)


def test_color_is_a_no_op_on_grey_and_desaturates_rgb():
    x = images(3, 1)
    assert torch.equal(functional["color"](x, 0.2), x)
    rgb = images(3, 3).float() / 255
    grey = functional["color"](rgb, 0.0)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    assert torch.allclose(grey[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2], atol=1e-6)


# --------------------------------------------------------------------------------- the same as Pillow's
PIL_CASES = {
    "autocontrast": (0, ImageOps.autocontrast),
    "equalize": (0, ImageOps.equalize),
    "solarize": (100, lambda im: ImageOps.solarize(im, 100)),
    "posterize": (3, lambda im: ImageOps.posterize(im, 3)),
    "invert": (0, ImageOps.invert),
    "brightness": (1.6, lambda im: ImageEnhance.Brightness(im).enhance(1.6)),
    "color": (0.3, lambda im: ImageEnhance.Color(im).enhance(0.3)),
    "contrast": (1.7, lambda im: ImageEnhance.Contrast(im).enhance(1.7)),
    "sharpness": (1.8, lambda im: ImageEnhance.Sharpness(im).enhance(1.8)),
    "shear_x": (0.3, lambda im: im.transform(im.size, Image.AFFINE, (1, 0.3, 0, 0, 1, 0))),
    "shear_y": (-0.25, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, -0.25, 1, 0))),
    "translate_x": (5, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, -5, 0, 1, 0))),
    "translate_y": (-4, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, 4))),
    "rotate": (23.0, lambda im: im.rotate(23.0)),
}
#: operations PIL computes in 8-bit steps with truncation where ours round once: one grey level apart at most
WITHIN_ONE = {"autocontrast", "brightness", "color", "contrast", "sharpness"}


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", sorted(PIL_CASES))
def test_each_operation_matches_pillow_on_uint8(name, c):
    value, reference = PIL_CASES[name]
    x = images(6, c)
    ours = functional[name](x, value)
    ref = torch.stack([from_pil(reference(to_pil(im)), c) for im in x])
    diff = (ours.int() - ref.int()).abs()
    assert diff.max() <= (1 if name in WITHIN_ONE else 0), (name, diff.max())
    assert ours.dtype == torch.uint8 and ours.shape == x.shape


def test_sharpness_below_one_blurs_like_pillow():
    x = images(4, 3)
    ref = torch.stack([from_pil(ImageEnhance.Sharpness(to_pil(im)).enhance(0.2), 3) for im in x])
    assert (functional["sharpness"](x, 0.2).int() - ref.int()).abs().max() <= 1


# ------------------------------------------------------------------------------------------ magnitudes
MAGNITUDE_OPS = sorted(set(RANGES["standard"]) | {"identity"})


@pytest.mark.parametrize("ranges", ["standard", "wide"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_magnitude_zero_is_the_identity(ranges, dtype):
    x = images(len(MAGNITUDE_OPS) * 2, 3)
    u = x.float() / 255 if dtype == torch.float32 else x
    names = tuple(MAGNITUDE_OPS)
    ops = torch.arange(len(names)).repeat(2)
    sign = torch.tensor([1.0, -1.0]).repeat_interleave(len(names))
    v = op_values(names, ops, torch.zeros(len(ops)), sign, (17, 19), RANGES[ranges])
    unit = u.float() / 255 if dtype == torch.uint8 else u
    out = apply_ops(unit, ops, v, names)
    assert torch.allclose(out, unit, atol=1e-6), [names[i] for i in range(len(names))
                                                  if not torch.allclose(out[i], unit[i], atol=1e-6)]


def test_magnitudes_map_to_the_ranges():
    names = ("rotate", "posterize", "solarize", "brightness", "translate_x", "translate_y")
    ops = torch.arange(6)
    v = op_values(names, ops, torch.ones(6), -torch.ones(6), (20, 40), RANGES["standard"])
    assert torch.allclose(v, torch.tensor([-30.0, 4.0, 0.0, 0.1, -round(40 * 150 / 331), -round(20 * 150 / 331)]))
    w = op_values(names, ops, torch.ones(6), torch.ones(6), (32, 32), RANGES["wide"])
    assert torch.allclose(w, torch.tensor([135.0, 2.0, 0.0, 1.99, 32.0, 32.0]))
    assert SIGNED.isdisjoint({"posterize", "solarize", "autocontrast", "equalize", "invert", "identity"})


def test_randaugment_magnitude_zero_changes_only_by_the_operations_without_magnitude():
    x = images(300, 3, lo=0, hi=256)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0, 255                      # autocontrast leaves these alone
    out = RandAugment(num_ops=1, magnitude=0)(x, generator=torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert changed < 2 / 14 + 0.06                              # only equalize (and autocontrast) change them


# ---------------------------------------------------------------------------- policies: batches, seeds
@pytest.mark.parametrize("make", POLICY_CLASSES)
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_policies_keep_shape_dtype_and_range_and_replay_by_seed(make, c, dtype):
    x = images(12, c, 10, 12)
    x = x if dtype == torch.uint8 else (x.to(dtype) / 255)
    p = make()
    a = p(x, generator=torch.Generator().manual_seed(3))
    b = p(x, generator=torch.Generator().manual_seed(3))
    d = p(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b) and not torch.equal(a, d)
    if dtype != torch.uint8:
        assert a.min() >= 0 and a.max() <= 1
    y = torch.arange(12)
    a2, y2 = p(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a2, a) and y2 is y
    assert p(x[:0]).shape == x[:0].shape


@pytest.mark.parametrize("make", POLICY_CLASSES)
def test_uint8_and_float_inputs_give_the_same_images(make):
    x = images(16, 3, 12, 12)
    a = make()(x, generator=torch.Generator().manual_seed(5))
    b = make()(x.float() / 255, generator=torch.Generator().manual_seed(5))
    assert ((b * 255).round() - a.float()).abs().max() <= 1


@pytest.mark.parametrize("make", POLICY_CLASSES)
def test_standardized_batches_are_augmented_in_pixel_space(make):
    x = images(16, 3, 12, 12)
    raw = x.float()                                             # raw values 0..255 as the pipeline holds them
    mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3))
    z = (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    plain = make()(x, generator=torch.Generator().manual_seed(5))
    policy = make()
    policy.space = type(policy.space)(mean.tolist(), std.tolist(), (0.0, 255.0))
    out = policy(z, generator=torch.Generator().manual_seed(5))
    back = out * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert (back.round() - plain.float()).abs().max() <= 1


def test_per_image_draws_are_uniform_and_independent():
    """RandAugment(N=1, M=30) on 2,800 copies of one image: recover each image's operation and sign by matching
    the 27 possible outputs; the operations are uniform and consecutive images' draws independent (chi-square)."""
    from scipy.stats import chi2_contingency, chisquare
    base = images(1, 3, 16, 16, lo=30, hi=220)
    n = 2800
    x = base.expand(n, -1, -1, -1).contiguous()
    out = RandAugment(num_ops=1, magnitude=30)(x, generator=torch.Generator().manual_seed(0))
    names = RANDAUGMENT_OPS
    candidates, labels = [], []
    for i, name in enumerate(names):
        for s in ((1.0, -1.0) if name in SIGNED else (1.0,)):
            v = op_values(names, torch.tensor([i]), torch.ones(1), torch.tensor([s]), (16, 16), RANGES["standard"])
            candidates.append(apply_ops(base.float() / 255, torch.tensor([i]), v, names))
            labels.append(i)
    cand = (torch.cat(candidates) * 255).round().to(torch.uint8)
    assert len({c.numpy().tobytes() for c in cand}) == len(cand)          # every outcome tells its operation
    match = (out[:, None] == cand[None]).flatten(2).all(2)
    assert (match.sum(1) == 1).all()
    op = torch.tensor(labels)[match.float().argmax(1)]
    counts = torch.bincount(op, minlength=len(names)).numpy()
    assert chisquare(counts).pvalue > 1e-3
    table = np.zeros((len(names), len(names)))
    for a, b in zip(op[0::2].tolist(), op[1::2].tolist()):
        table[a, b] += 1
    assert chi2_contingency(table).pvalue > 1e-3
    signs = [(match[:, j].sum().item()) for j in range(len(labels)) if names[labels[j]] == "rotate"]
    assert abs(signs[0] - signs[1]) < 4 * np.sqrt(signs[0] + signs[1])    # both signs, evenly


def test_autoaugment_tables_are_the_published_shape():
    for name, table in POLICIES.items():
        assert len(table) == 25, name
        for sub in table:
            assert len(sub) == 2
            for op, p, m in sub:
                assert op in OPS and 0.0 <= p <= 1.0 and 0 <= m <= 9
    assert POLICIES["imagenet"][0] == (("posterize", 0.4, 8), ("rotate", 0.6, 9))
    assert POLICIES["cifar10"][0] == (("invert", 0.1, 0), ("contrast", 0.2, 6))
    assert POLICIES["svhn"][-1] == (("shear_x", 0.7, 2), ("invert", 0.1, 0))


def test_autoaugment_applies_each_step_with_its_probability():
    """The ImageNet policy's sub-policy 12 is (equalize 0.0, equalize 0.8): on images equalize changes, with the
    sub-policies fixed to it, 80% of them change."""
    p = AutoAugment("imagenet")
    p._ops, p._prob, p._frac = p._ops[12:13], p._prob[12:13], p._frac[12:13]
    x = images(2000, 1, 32, 32, lo=40, hi=120)                  # (PIL equalizes nothing under 256 pixels)
    out = p(x, generator=torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert abs(changed - 0.8) < 0.04


def test_trivialaugment_draws_one_operation_and_magnitude_uniformly_per_image():
    """The draws TrivialAugment hands to its operations: uniform over the 14 operations and the 31 levels, wide
    ranges (rotations up to 135 degrees)."""
    from scipy.stats import chisquare
    seen = {}

    class Spy(TrivialAugment):
        def _apply(self, u, names, ops, frac, generator, ranges):
            seen.update(ops=ops, frac=frac, ranges=ranges)
            return super()._apply(u, names, ops, frac, generator, ranges)

    n = 31 * 14 * 10
    Spy()(torch.zeros(n, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert chisquare(torch.bincount(seen["ops"], minlength=14).numpy()).pvalue > 1e-3
    levels = (seen["frac"] * 30).round().long()
    assert torch.allclose(seen["frac"] * 30, levels.float(), atol=1e-5)
    assert chisquare(torch.bincount(levels, minlength=31).numpy()).pvalue > 1e-3
    assert seen["ranges"]["rotate"] == 135.0


def test_augmix_is_a_convex_mix_of_chains():
    x = images(64, 3, 12, 12).float() / 255
    out = AugMix(width=2, depth=1)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1 and not torch.equal(out, x)
    # alpha large: m ~ Beta(a, a) near 1/2, so about half of the original remains
    a = AugMix(alpha=50.0, width=1, depth=1)(x, generator=torch.Generator().manual_seed(0))
    assert (a - x).abs().mean() < (out - x).abs().mean() * 3


# ------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="C = 1"):
        RandAugment()(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="N, C, H, W"):
        TrivialAugment()(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="unknown policy"):
        AutoAugment("cifar100")
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)
    with pytest.raises(ValueError, match="num_ops"):
        RandAugment(num_ops=-1)
    with pytest.raises(ValueError, match="interpolation"):
        TrivialAugment(interpolation="bicubic")
    with pytest.raises(ValueError, match="fill"):
        TrivialAugment(fill=128)
    with pytest.raises(ValueError, match="mean and std"):
        TrivialAugment(mean=[0.5])
    with pytest.raises(ValueError, match="pixel_range"):
        TrivialAugment(pixel_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="uint8 or float"):
        TrivialAugment()(torch.zeros(2, 1, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="depth"):
        AugMix(depth=0)
    with pytest.raises(TypeError, match="generator"):
        TrivialAugment()(torch.rand(2, 1, 8, 8), torch.Generator())


# ------------------------------------------------------------------------------------- registry, config
def test_registered_with_their_options_and_the_data_supplied():
    assert {"autoaugment", "randaugment", "trivialaugment", "augmix"} <= set(AUGMENTATIONS.names())
    assert AUGMENTATIONS.defaults("randaugment") == {"num_ops": 2, "magnitude": 9, "num_magnitude_bins": 31,
                                                     "interpolation": "nearest", "fill": 0.0}
    assert "policy" in AUGMENTATIONS.defaults("autoaugment")
    for name in ("autoaugment", "randaugment", "trivialaugment", "augmix"):
        assert not {"mean", "std", "pixel_range"} & set(AUGMENTATIONS.defaults(name))


def test_the_recipe_gives_the_policies_the_datas_standardization():
    data = load_data("digits", val_size=0.1)
    assert data.pixel_range == (0.0, 1.0)
    aug = build_augment([{"name": "randaugment", "num_ops": 1}, "flip"], data.num_classes, data)
    policy = aug.augs[0]
    assert policy.num_ops == 1 and policy.space.mean == data.mean and policy.space.pixel_range == (0.0, 1.0)
    xb = data.train_x[:32]
    out, _ = aug(xb, data.train_y[:32], torch.Generator().manual_seed(0))
    raw = out * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    assert raw.min() > -1e-4 and raw.max() < 1 + 1e-4                  # black stays black, white white


def test_one_tiny_epoch_with_trivialaugment_on_digits(tiny_cfg, tmp_path):
    cfg = tiny_cfg("epochs=1", "data.augment_from_epoch=0",
                   'data.augment=["trivialaugment", {name = "randaugment", magnitude = 5}]')
    trainer = build_trainer(cfg, progress=False)
    loader = trainer.train_loader
    assert isinstance(loader.transform.augs[0], TrivialAugment) and loader.transform_from_epoch == 0
    augmented, _ = next(iter(loader))
    loader.transform = None
    plain, _ = next(iter(loader))
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    summary = run(cfg, tmp_path / "r", progress=False)
    assert summary["epochs"] == 1 and np.isfinite(summary["test_accuracy"])
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs"] == 1


def test_pixel_range_of_raw_inputs():
    from traintricks.data.datasets import pixel_range
    assert pixel_range(torch.zeros(2, 1, 4, 4, dtype=torch.uint8)) == (0.0, 255.0)
    assert pixel_range(torch.rand(2, 1, 4, 4)) == (0.0, 1.0)
    assert pixel_range(torch.tensor([[-2.0, 3.0]])) == (-2.0, 3.0)
    assert pixel_range(torch.full((3,), 7.0)) == (7.0, 8.0)          # constant inputs: a range of one


def test_float_images_outside_the_pixel_range_are_refused_not_clamped():
    # a new user's float 0..255 batch came back clamped and mostly black, without a word
    x = torch.rand(4, 3, 16, 16) * 255
    with pytest.raises(ValueError, match="float images must lie in pixel_range"):
        RandAugment()(x)
    out = RandAugment(pixel_range=(0, 255))(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.max() > 1.5
