"""Augmentation policies on batches of tensors (no torchvision): AutoAugment, RandAugment, TrivialAugment, AugMix.

The image operations are the Python Imaging Library's (``ImageOps`` / ``ImageEnhance`` / ``Image.transform``),
which the papers used, on a whole batch ``(N, C, H, W)`` of grey (``C = 1``) or RGB (``C = 3``) images, with a
random operation and magnitude **per image**: the batch is grouped by operation, every affine operation (shear,
translate, rotate) of the batch goes through one ``F.affine_grid`` / ``F.grid_sample`` call with per-image
matrices, and each other operation runs once on its group.

**Value range.** Every operation works on images in ``[0, 1]`` (0 black, 1 white) as float; the 8-bit operations
(posterize, solarize's threshold, equalize, the contrast mean) work on the 256 grey levels ``round(255 u)``. A
policy accepts

- ``uint8`` batches (0..255), returned as ``uint8`` (rounded once at the end, not after each operation);
- float batches of raw pixel values in ``pixel_range`` (default ``(0, 1)``), returned as floats in that range;
- the *standardized* float batches the in-memory pipeline gives (:func:`~traintricks.data.load_data` standardizes
  per channel before the loader augments): with the data's per-channel ``mean`` and ``std`` and the raw
  ``pixel_range`` (the recipe passes :class:`~traintricks.data.DataSplits`' ``mean``, ``std`` and ``pixel_range``),
  ``u = (x * std + mean - lo) / (hi - lo)``, the policy acts on ``u`` and standardizes the result back. Without
  them a standardized batch would be read as pixel values and black would not be black.

**Magnitudes.** An operation's strength is a fraction ``f`` in ``[0, 1]`` of its range (signed operations take a
random sign per image), the ranges of torchvision's implementation of the papers:

- shear_x, shear_y: ``+-0.3 f`` (``x_in = x + s y``); wide ``+-0.99 f``
- translate_x, translate_y: ``+-(150/331) f`` of the image size in whole pixels; wide ``+-f`` of the size
- rotate: ``+-30 f`` degrees; wide ``+-135 f``
- brightness, color, contrast, sharpness: the factor ``1 +- 0.9 f``; wide ``1 +- 0.99 f``
- posterize: ``8 - round(4 f)`` bits; wide ``8 - round(6 f)``
- solarize: the threshold ``256 (1 - f)`` grey levels (both)
- autocontrast, equalize, invert, identity: no magnitude

The standard ranges serve AutoAugment, RandAugment and AugMix, the wide ones TrivialAugment.
(TrivialAugment's paper gives the translation as 32 pixels on CIFAR's 32-pixel images; it is taken here as the
whole size, so that it means the same on 8 x 8 digits. Solarize's threshold is the papers' ``[0, 256]``, so that
``f = 0`` is the identity; torchvision uses ``255 (1 - f)``.)

**Definitions** (PIL's; ``L = 0.299 R + 0.587 G + 0.114 B``, the luminance, is the image itself when grey):
autocontrast maps each channel's ``[min, max]`` to ``[0, 1]`` (unchanged when flat); equalize maps each channel's
grey levels through PIL's cumulative-histogram table; solarize inverts the levels ``>= threshold``; posterize keeps
the top ``bits`` bits of each level; brightness blends with black, color with ``L`` (a no-op on grey images),
contrast with the grey image of ``L``'s mean (rounded to a level), sharpness with the image smoothed by PIL's
``SMOOTH`` kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` (border pixels unchanged): ``out = d + k (x - d)``,
clipped to ``[0, 1]``. Geometric operations sample the input at ``A (p + 0.5) + t`` for output pixel ``p`` (PIL's
inverse map on pixel centres, origin at the top-left corner; rotation about the centre, counter-clockwise for a
positive angle), nearest neighbour (PIL's default, as in the papers) or bilinear, and fill outside with ``fill``
(a fraction of the pixel range: 0 is black). Uint8 results agree with Pillow's within one grey level (PIL rounds
after each step, sometimes by truncation) and geometric ones pixel for pixel but for rounding ties.

Raises ``ValueError`` for a batch that is not ``(N, C, H, W)`` with ``C`` 1 or 3, or for options out of range.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
import torch.nn.functional as F

from .augment import AUGMENTATIONS, BatchTransform

_LUMA = (0.299, 0.587, 0.114)
#: a thousandth of a pixel added to the sampling position in nearest mode: PIL takes floor(position) where
#: grid_sample rounds half to even, and the two differ only at exact ties
_TIE = 1e-3

AFFINE_OPS = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
#: RandAugment's 14 operations (1909.13719, section 3), also TrivialAugment's (2103.10129)
RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize", "contrast",
                   "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
#: AugMix's operations (1912.02781): those that do not overlap ImageNet-C's corruptions; ``all_ops`` adds the rest
AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y", "translate_x",
              "translate_y")
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
                    "sharpness"})

#: the largest magnitude (f = 1) of each operation, in its own unit (translate: a fraction of the image size)
RANGES = {
    "standard": {"shear_x": 0.3, "shear_y": 0.3, "translate_x": 150 / 331, "translate_y": 150 / 331, "rotate": 30.0,
                 "brightness": 0.9, "color": 0.9, "contrast": 0.9, "sharpness": 0.9, "posterize": 4.0,
                 "solarize": 1.0},
    "wide": {"shear_x": 0.99, "shear_y": 0.99, "translate_x": 1.0, "translate_y": 1.0, "rotate": 135.0,
             "brightness": 0.99, "color": 0.99, "contrast": 0.99, "sharpness": 0.99, "posterize": 6.0,
             "solarize": 1.0},
}


# ---------------------------------------------------------------------------------------------- the operations
# Each kernel takes images u (K, C, H, W) float in [0, 1] and its parameter v (K,) in its own unit.

def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} needs images (N, C, H, W) with C = 1 (grey) or 3 (RGB), got {shape}")


def _luma(u: torch.Tensor) -> torch.Tensor:
    """(K, 1, H, W) luminance ``0.299 R + 0.587 G + 0.114 B`` (grey images: themselves)."""
    if u.shape[1] == 1:
        return u
    w = torch.tensor(_LUMA, dtype=u.dtype, device=u.device).view(1, 3, 1, 1)
    return (u * w).sum(1, keepdim=True)


def _levels(u: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """The 8-bit grey levels ``round(255 u)``, clipped to 0..255, as ``dtype``."""
    return (u * 255).round_().clamp_(0, 255).to(dtype)


def _blend(degenerate: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, u, k) = d + k (u - d)``, clipped to [0, 1]; ``k`` per image."""
    return (u - degenerate).mul_(k.view(-1, 1, 1, 1)).add_(degenerate).clamp_(0, 1)


def _identity(u, v):
    return u


def _invert(u, v):
    return 1 - u


def _autocontrast(u, v):
    lo = u.amin(dim=(2, 3), keepdim=True)
    hi = u.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1 / (hi - lo).clamp_min(1e-12))
    return (u - torch.where(flat, torch.zeros_like(lo), lo)).mul_(scale).clamp_(0, 1)


def _equalize(u, v):
    k, c, h, w = u.shape
    q = _levels(u).view(k * c, h * w)
    q += torch.arange(0, k * c * 256, 256, device=u.device).view(-1, 1)           # row r's levels at 256 r + level
    hist = torch.bincount(q.view(-1), minlength=k * c * 256).view(k * c, 256)
    levels = torch.arange(256, device=u.device)
    last = torch.where(hist > 0, levels, -1).amax(1, keepdim=True)           # the highest level present
    step = (h * w - hist.gather(1, last)) // 255                              # PIL: (sum - histo[-1]) // 255
    before = hist.cumsum(1) - hist                                            # pixels below each level
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp(max=255)
    lut = torch.where(step > 0, lut, levels).to(u.dtype) / 255                # one level or too few: identity
    return lut.view(-1).take(q).view(k, c, h, w)


def _solarize(u, v):
    thr = ((v * 256 - 1e-3) / 255).view(-1, 1, 1, 1)          # grey levels 0..256, as a fraction of 255
    return torch.where(u >= thr, 1 - u, u)


def _posterize(u, v):
    bits = v.round().int().clamp(0, 8).view(-1, 1, 1, 1)
    mask = 256 - (1 << (8 - bits))                             # the top `bits` bits of a byte
    return _levels(u, torch.int32).bitwise_and_(mask).to(u.dtype).div_(255)


def _brightness(u, v):
    return _blend(torch.zeros_like(u), u, v)


def _color(u, v):
    return u if u.shape[1] == 1 else _blend(_luma(u).expand_as(u), u, v)


def _contrast(u, v):
    mean = _luma(u).mean(dim=(1, 2, 3), keepdim=True)
    mean = (mean * 255).round() / 255                          # PIL: int(mean + 0.5) grey levels
    return _blend(mean.expand_as(u), u, v)


def _sharpness(u, v):
    if u.shape[2] < 3 or u.shape[3] < 3:
        return u
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3 x 3 box sum + 4 centre) / 13, interior only
    rows = (u[:, :, :-2] + u[:, :, 1:-1]).add_(u[:, :, 2:])
    box = (rows[..., :-2] + rows[..., 1:-1]).add_(rows[..., 2:])
    degenerate = u.clone()
    degenerate[:, :, 1:-1, 1:-1] = box.add_(u[:, :, 1:-1, 1:-1], alpha=4).div_(13)
    return _blend(degenerate, u, v)


KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": _identity, "invert": _invert, "autocontrast": _autocontrast, "equalize": _equalize,
    "solarize": _solarize, "posterize": _posterize, "brightness": _brightness, "color": _color,
    "contrast": _contrast, "sharpness": _sharpness,
}
OPS = tuple(KERNELS) + AFFINE_OPS


def _affine_matrices(names: tuple[str, ...], ops: torch.Tensor, v: torch.Tensor, h: int, w: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (K, 2, 2) linear maps ``A`` and (K, 2) offsets ``t`` (pixels, rows x then y) of the affine
    operations ``names[ops[i]]`` with parameters ``v`` (K,): input position = A (p + 0.5) + t."""
    k = len(v)
    is_ = {n: (ops == names.index(n)) if n in names else torch.zeros(k, dtype=torch.bool, device=v.device)
           for n in AFFINE_OPS}
    zero, one = torch.zeros_like(v), torch.ones_like(v)
    rad = torch.deg2rad(v)
    cos, sin = torch.cos(rad), torch.sin(rad)
    rot = is_["rotate"]
    # PIL: shear_x (1, s, 0, 0, 1, 0), shear_y (1, 0, 0, s, 1, 0); rotate input = R (p - c) + c about the centre
    # c = (w/2, h/2) with R = [[cos, -sin], [sin, cos]] (counter-clockwise on screen for a positive angle)
    a00 = torch.where(rot, cos, one)
    a01 = torch.where(rot, -sin, torch.where(is_["shear_x"], v, zero))
    a10 = torch.where(rot, sin, torch.where(is_["shear_y"], v, zero))
    a = torch.stack([torch.stack([a00, a01], -1), torch.stack([a10, a00], -1)], -2)
    c = torch.tensor([w / 2, h / 2], dtype=v.dtype, device=v.device)
    shift = torch.stack([torch.where(is_["translate_x"], -v, zero), torch.where(is_["translate_y"], -v, zero)], -1)
    t = torch.where(rot[:, None], c - a @ c, shift)             # translate: the content moves by +v pixels
    return a, t


def affine(u: torch.Tensor, a: torch.Tensor, t: torch.Tensor, fill: float = 0.0,
           interpolation: str = "nearest") -> torch.Tensor:
    """Resample images ``u`` (K, C, H, W) float at ``A (p + 0.5) + t`` for each output pixel ``p`` (x, y), with
    per-image ``A`` (K, 2, 2) and ``t`` (K, 2) in pixels (PIL's ``Image.transform(AFFINE)`` convention), in one
    ``affine_grid`` / ``grid_sample`` call; outside the image: ``fill``."""
    k, c, h, w = u.shape
    s = torch.tensor([w / 2, h / 2], dtype=u.dtype, device=u.device)
    a, t = a.to(u.dtype), t.to(u.dtype)
    if interpolation == "nearest":
        t = t + _TIE
    # grid_sample's normalized coordinates (align_corners=False): position = s (n + 1)
    lin = a * s.view(1, 1, 2) / s.view(1, 2, 1)
    off = ((a * s.view(1, 1, 2)).sum(-1) + t) / s - 1
    grid = F.affine_grid(torch.cat([lin, off.unsqueeze(-1)], -1), [k, c, h, w], align_corners=False)
    return F.grid_sample(u - fill, grid, mode=interpolation, padding_mode="zeros", align_corners=False) + fill


def apply_ops(u: torch.Tensor, ops: torch.Tensor, values: torch.Tensor, names: tuple[str, ...] = OPS,
              fill: float = 0.0, interpolation: str = "nearest") -> torch.Tensor:
    """Apply operation ``names[ops[i]]`` with parameter ``values[i]`` (its own unit: pixels for translations) to
    image ``i`` of ``u`` (N, C, H, W) float in [0, 1]. The batch is sorted by operation (one gather), every affine
    operation of the batch runs in one resampling and each other operation once on its contiguous group, and the
    results go back to their places (one ``index_copy_``)."""
    names = tuple(names)
    h, w = u.shape[2], u.shape[3]
    is_affine = torch.tensor([n in AFFINE_OPS for n in names], device=ops.device)
    key = torch.where(is_affine[ops], -1, ops)                  # all the affine operations: one group
    order = torch.argsort(key, stable=True)
    groups, counts = torch.unique_consecutive(key[order], return_counts=True)
    us, vs, os = u.index_select(0, order), values[order].to(u.dtype), ops[order]
    out = torch.empty_like(u)
    start = 0
    for k, count in zip(groups.tolist(), counts.tolist()):
        sl = slice(start, start + count)
        if k == -1:
            a, t = _affine_matrices(names, os[sl], vs[sl], h, w)
            piece = affine(us[sl], a, t, fill, interpolation)
        else:
            piece = KERNELS[names[k]](us[sl], vs[sl])
        out.index_copy_(0, order[sl], piece)
        start += count
    return out


def op_values(names: tuple[str, ...], ops: torch.Tensor, frac: torch.Tensor, sign: torch.Tensor,
              size: tuple[int, int], ranges: dict[str, float]) -> torch.Tensor:
    """Each image's parameter from its operation ``names[ops[i]]``, magnitude fraction ``frac[i]`` in [0, 1] and
    sign (+1 or -1, used by the signed operations): the factor ``1 +- r f`` of the enhancers, ``8 - round(r f)``
    bits, the solarize threshold ``1 - f`` (of 256 levels), whole pixels ``round(r f size)`` for translations."""
    h, w = size
    table = {n: (ranges.get(n, 0.0), n in SIGNED) for n in names}
    scale = torch.tensor([table[n][0] for n in names], dtype=frac.dtype)[ops]
    signed = torch.tensor([table[n][1] for n in names])[ops]
    v = scale * frac * torch.where(signed, sign, torch.ones_like(sign))
    name_of = list(names)
    for n, fn in (("brightness", lambda v: 1 + v), ("color", lambda v: 1 + v), ("contrast", lambda v: 1 + v),
                  ("sharpness", lambda v: 1 + v), ("posterize", lambda v: 8 - v.round()),
                  ("solarize", lambda v: 1 - v), ("translate_x", lambda v: (v * w).round()),
                  ("translate_y", lambda v: (v * h).round())):
        if n in name_of:
            v = torch.where(ops == name_of.index(n), fn(v), v)
    return v


# ------------------------------------------------------------------------------------------ value-range handling
class _PixelSpace:
    """Maps a batch to images in [0, 1] and back: uint8 (/255), raw floats in ``pixel_range``, or standardized
    floats (``mean``, ``std`` per channel, and the raw ``pixel_range``)."""

    def __init__(self, mean, std, pixel_range) -> None:
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (the data's standardization) or neither")
        if pixel_range is not None:
            lo, hi = (float(v) for v in pixel_range)
            if not hi > lo:
                raise ValueError(f"pixel_range must be (low, high) with high > low, got {tuple(pixel_range)}")
        if std is not None and any(float(s) <= 0 for s in std):
            raise ValueError(f"std must be > 0, got {list(std)}")
        self.mean, self.std = mean, std
        self.pixel_range = None if pixel_range is None else (float(pixel_range[0]), float(pixel_range[1]))

    def _scale(self, x: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """u = x * a + b per channel."""
        c = x.shape[1]
        lo, hi = self.pixel_range or ((0.0, 255.0) if x.dtype == torch.uint8 else (0.0, 1.0))
        mean = torch.zeros(c) if self.mean is None else torch.as_tensor(self.mean, dtype=torch.float64)
        std = torch.ones(c) if self.std is None else torch.as_tensor(self.std, dtype=torch.float64)
        if mean.numel() not in (1, c) or std.numel() not in (1, c):
            raise ValueError(f"mean/std have {mean.numel()}/{std.numel()} values for {c} channels")
        a = (std / (hi - lo)).expand(c).reshape(1, c, 1, 1)
        b = ((mean - lo) / (hi - lo)).expand(c).reshape(1, c, 1, 1)
        return a.to(dtype=dtype, device=x.device), b.to(dtype=dtype, device=x.device)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() and x.dtype != torch.float16 and x.dtype != torch.bfloat16 \
            else torch.float32
        if x.dtype == torch.uint8 and self.mean is None and self.pixel_range is None:
            return x.to(dtype).div_(255)
        if not (x.is_floating_point() or x.dtype == torch.uint8):
            raise ValueError(f"images must be uint8 or float, got {x.dtype}")
        a, b = self._scale(x, dtype)
        u = x.to(dtype) * a + b
        if self.mean is None and x.is_floating_point() and u.numel():
            # raw float pixels must lie in pixel_range ((0, 1) unless given): a 0..255 float batch would otherwise
            # be clamped and silently misread (the data pipeline, not a forward pass: one check per batch)
            lo, hi = float(u.min()), float(u.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                r = self.pixel_range or (0.0, 1.0)
                raise ValueError(f"float images must lie in pixel_range {r}, got values in "
                                 f"{lo * (r[1] - r[0]) + r[0]:.4g}..{hi * (r[1] - r[0]) + r[0]:.4g}; give uint8 "
                                 "images for 0..255, or pixel_range=(low, high), or the data's mean and std")
        return u

    def from_unit(self, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.dtype == torch.uint8 and self.mean is None and self.pixel_range is None:
            return (u * 255).round_().clamp_(0, 255).to(torch.uint8)
        a, b = self._scale(like, u.dtype)
        x = (u - b) / a
        if like.dtype == torch.uint8:
            return x.round().clamp(0, 255).to(torch.uint8)
        return x.to(like.dtype)


# -------------------------------------------------------------------------------------------------- policies
class _Policy(BatchTransform):
    """What the policies share: options' checks, the pixel space, and per-image draws."""

    def __init__(self, interpolation: str, fill: float, mean, std, pixel_range) -> None:
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        if not 0.0 <= fill <= 1.0:
            raise ValueError(f"fill is a fraction of the pixel range (0 black, 1 white), in [0, 1]; got {fill}")
        self.interpolation, self.fill = interpolation, float(fill)
        self.space = _PixelSpace(mean, std, pixel_range)

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_images(x, type(self).__name__)
        if x.shape[0] == 0:
            return x
        u = self.space.to_unit(x)
        return self.space.from_unit(self.augment(u, generator), x)

    def augment(self, u: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _apply(self, u, names, ops, frac, generator, ranges):
        n = u.shape[0]
        sign = torch.randint(0, 2, (n,), generator=generator).to(frac.dtype) * 2 - 1
        values = op_values(names, ops, frac, sign, (u.shape[2], u.shape[3]), ranges)
        return apply_ops(u, ops.to(u.device), values.to(u.device), names, self.fill, self.interpolation)


def _parse_policy(rows: str) -> tuple[tuple[tuple[str, float, int], ...], ...]:
    out = []
    for line in rows.strip().splitlines():
        a, b = (part.split() for part in line.split("|"))
        out.append(tuple((op, float(p), int(m)) for op, p, m in (a, b)))
    return tuple(out)


# The published policies (1805.09501, appendix, Tables 7-9 / the authors' code): 25 sub-policies each, each two
# (operation, probability, magnitude level 0..9) triples; the level of an operation without magnitude is unused.
POLICIES = {
    "imagenet": _parse_policy("""
        posterize 0.4 8 | rotate 0.6 9
        solarize 0.6 5 | autocontrast 0.6 0
        equalize 0.8 0 | equalize 0.6 0
        posterize 0.6 7 | posterize 0.6 6
        equalize 0.4 0 | solarize 0.2 4
        equalize 0.4 0 | rotate 0.8 8
        solarize 0.6 3 | equalize 0.6 0
        posterize 0.8 5 | equalize 1.0 0
        rotate 0.2 3 | solarize 0.6 8
        equalize 0.6 0 | posterize 0.4 6
        rotate 0.8 8 | color 0.4 0
        rotate 0.4 9 | equalize 0.6 0
        equalize 0.0 0 | equalize 0.8 0
        invert 0.6 0 | equalize 1.0 0
        color 0.6 4 | contrast 1.0 8
        rotate 0.8 8 | color 1.0 2
        color 0.8 8 | solarize 0.8 7
        sharpness 0.4 7 | invert 0.6 0
        shear_x 0.6 5 | equalize 1.0 0
        color 0.4 0 | equalize 0.6 0
        equalize 0.4 0 | solarize 0.2 4
        solarize 0.6 5 | autocontrast 0.6 0
        invert 0.6 0 | equalize 1.0 0
        color 0.6 4 | contrast 1.0 8
        equalize 0.8 0 | equalize 0.6 0"""),
    "cifar10": _parse_policy("""
        invert 0.1 0 | contrast 0.2 6
        rotate 0.7 2 | translate_x 0.3 9
        sharpness 0.8 1 | sharpness 0.9 3
        shear_y 0.5 8 | translate_y 0.7 9
        autocontrast 0.5 0 | equalize 0.9 0
        shear_y 0.2 7 | posterize 0.3 7
        color 0.4 3 | brightness 0.6 7
        sharpness 0.3 9 | brightness 0.7 9
        equalize 0.6 0 | equalize 0.5 0
        contrast 0.6 7 | sharpness 0.6 5
        color 0.7 7 | translate_x 0.5 8
        equalize 0.3 0 | autocontrast 0.4 0
        translate_y 0.4 3 | sharpness 0.2 6
        brightness 0.9 6 | color 0.2 8
        solarize 0.5 2 | invert 0.0 0
        equalize 0.2 0 | autocontrast 0.6 0
        equalize 0.2 0 | equalize 0.6 0
        color 0.9 9 | equalize 0.6 0
        autocontrast 0.8 0 | solarize 0.2 8
        brightness 0.1 3 | color 0.7 0
        solarize 0.4 5 | autocontrast 0.9 0
        translate_y 0.9 9 | translate_y 0.7 9
        autocontrast 0.9 0 | solarize 0.8 3
        equalize 0.8 0 | invert 0.1 0
        translate_y 0.7 9 | autocontrast 0.9 0"""),
    "svhn": _parse_policy("""
        shear_x 0.9 4 | invert 0.2 0
        shear_y 0.9 8 | invert 0.7 0
        equalize 0.6 0 | solarize 0.6 6
        invert 0.9 0 | equalize 0.6 0
        equalize 0.6 0 | rotate 0.9 3
        shear_x 0.9 4 | autocontrast 0.8 0
        shear_y 0.9 8 | invert 0.4 0
        shear_y 0.9 5 | solarize 0.2 6
        invert 0.9 0 | autocontrast 0.8 0
        equalize 0.6 0 | rotate 0.9 3
        shear_x 0.9 4 | solarize 0.3 3
        shear_y 0.8 8 | invert 0.7 0
        equalize 0.9 0 | translate_y 0.6 6
        invert 0.9 0 | equalize 0.6 0
        contrast 0.3 3 | rotate 0.8 4
        invert 0.8 0 | translate_y 0.0 2
        shear_y 0.7 6 | solarize 0.4 8
        invert 0.6 0 | rotate 0.8 4
        shear_y 0.3 7 | translate_x 0.9 3
        shear_x 0.1 6 | invert 0.6 0
        solarize 0.7 2 | translate_y 0.6 7
        shear_y 0.8 4 | invert 0.8 0
        shear_x 0.7 9 | translate_y 0.8 3
        shear_y 0.8 5 | autocontrast 0.7 0
        shear_x 0.7 2 | invert 0.1 0"""),
}


class AutoAugment(_Policy):
    r"""AutoAugment (Cubuk et al. 2018, arXiv:1805.09501) with a published policy: each image draws one of the
    policy's 25 sub-policies uniformly; each of its two steps ``(operation, probability p, level m)`` is applied
    with probability ``p`` at magnitude ``f = m / 9`` of the standard range (the paper's "10 uniformly spaced
    values"; torchvision's reading, where the authors' code took ``m / 10``), with a random sign where signed.

    Args:
        policy: ``"imagenet"``, ``"cifar10"`` or ``"svhn"`` (:data:`POLICIES`).
        interpolation: ``"nearest"`` (PIL's default, the papers') or ``"bilinear"`` for the geometric operations.
        fill: value outside a moved image, a fraction of the pixel range (0: black).
        mean, std, pixel_range: the data's standardization and raw range (see the module docstring; supplied by
            the recipe).

    Shapes: ``(N, C, H, W)``, ``C`` 1 or 3, uint8 or float; the same shape and dtype back.
    """

    def __init__(self, policy: str = "imagenet", interpolation: str = "nearest", fill: float = 0.0,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 pixel_range: tuple[float, float] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"autoaugment: unknown policy {policy!r}; choose one of: {', '.join(POLICIES)}")
        super().__init__(interpolation, fill, mean, std, pixel_range)
        self.policy = policy
        table = POLICIES[policy]
        self._names = tuple(dict.fromkeys(["identity"] + [op for sub in table for op, _, _ in sub]))
        self._ops = torch.tensor([[self._names.index(op) for op, _, _ in sub] for sub in table])
        self._prob = torch.tensor([[p for _, p, _ in sub] for sub in table])
        self._frac = torch.tensor([[m / 9 for _, _, m in sub] for sub in table])

    def augment(self, u, generator):
        n = u.shape[0]
        sub = torch.randint(0, len(self._ops), (n,), generator=generator)
        identity = self._names.index("identity")
        for step in range(2):
            apply = torch.rand(n, generator=generator) < self._prob[sub, step]
            ops = torch.where(apply, self._ops[sub, step], identity)
            u = self._apply(u, self._names, ops, self._frac[sub, step], generator, RANGES["standard"])
        return u

    def __repr__(self) -> str:
        return f"AutoAugment(policy={self.policy!r}, interpolation={self.interpolation!r}, fill={self.fill})"


class RandAugment(_Policy):
    r"""RandAugment (Cubuk et al. 2019, arXiv:1909.13719): ``num_ops`` operations per image, each drawn uniformly
    (with replacement) from the 14 of :data:`RANDAUGMENT_OPS`, all at the one magnitude ``magnitude`` of
    ``num_magnitude_bins`` levels, i.e. ``f = magnitude / (num_magnitude_bins - 1)`` of the standard range, with a
    random sign per image where signed. Levels as torchvision's (31 bins, ``M`` in 0..30, default 9 = 0.3 of the
    range); the paper's TensorFlow code divides by 10 instead (its ``M = 9`` is 0.9 of the range: set
    ``num_magnitude_bins = 11``).

    Args:
        num_ops: ``N``, operations applied in sequence per image (>= 0).
        magnitude: ``M``, in ``0 .. num_magnitude_bins - 1``.
        num_magnitude_bins: levels of the magnitude scale (>= 2).
        interpolation, fill, mean, std, pixel_range: as :class:`AutoAugment`.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: str = "nearest", fill: float = 0.0, mean: list[float] | None = None,
                 std: list[float] | None = None, pixel_range: tuple[float, float] | None = None) -> None:
        if num_ops < 0:
            raise ValueError(f"randaugment: num_ops must be >= 0, got {num_ops}")
        if num_magnitude_bins < 2:
            raise ValueError(f"randaugment: num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
        if not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"randaugment: magnitude must be in 0..{num_magnitude_bins - 1}, got {magnitude}")
        super().__init__(interpolation, fill, mean, std, pixel_range)
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins

    def augment(self, u, generator):
        n = u.shape[0]
        frac = torch.full((n,), self.magnitude / (self.num_magnitude_bins - 1))
        for _ in range(self.num_ops):
            ops = torch.randint(0, len(RANDAUGMENT_OPS), (n,), generator=generator)
            u = self._apply(u, RANDAUGMENT_OPS, ops, frac, generator, RANGES["standard"])
        return u

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_magnitude_bins}, interpolation={self.interpolation!r}, fill={self.fill})")


class TrivialAugment(_Policy):
    r"""TrivialAugment Wide (Müller & Hutter 2021, arXiv:2103.10129): one operation per image, drawn uniformly
    from the 14 of :data:`RANDAUGMENT_OPS`, at a magnitude drawn uniformly from ``num_magnitude_bins`` levels
    (``f = m / (bins - 1)``, ``m`` uniform in ``0 .. bins - 1``; the paper's 31) of the *wide* ranges, with a random
    sign where signed.

    Args:
        num_magnitude_bins: levels of the magnitude scale (>= 2).
        wide: the paper's wide ranges (default), or the standard ones (its "RA" space).
        interpolation, fill, mean, std, pixel_range: as :class:`AutoAugment`.
    """

    def __init__(self, num_magnitude_bins: int = 31, wide: bool = True, interpolation: str = "nearest",
                 fill: float = 0.0, mean: list[float] | None = None, std: list[float] | None = None,
                 pixel_range: tuple[float, float] | None = None) -> None:
        if num_magnitude_bins < 2:
            raise ValueError(f"trivialaugment: num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
        super().__init__(interpolation, fill, mean, std, pixel_range)
        self.num_magnitude_bins, self.wide = num_magnitude_bins, wide

    def augment(self, u, generator):
        n = u.shape[0]
        ops = torch.randint(0, len(RANDAUGMENT_OPS), (n,), generator=generator)
        frac = torch.randint(0, self.num_magnitude_bins, (n,), generator=generator) / (self.num_magnitude_bins - 1)
        return self._apply(u, RANDAUGMENT_OPS, ops, frac.float(), generator,
                           RANGES["wide" if self.wide else "standard"])

    def __repr__(self) -> str:
        return (f"TrivialAugment(num_magnitude_bins={self.num_magnitude_bins}, wide={self.wide}, "
                f"interpolation={self.interpolation!r}, fill={self.fill})")


class AugMix(_Policy):
    r"""AugMix (Hendrycks et al. 2019, arXiv:1912.02781), the augmentation without the paper's Jensen-Shannon
    consistency loss: per image, ``width`` chains of ``depth`` operations (``depth = -1``: 1 to 3, drawn per chain)
    from :data:`AUGMIX_OPS` (``all_ops``: also color, contrast, brightness, sharpness), each at a magnitude fraction
    ``f ~ U(0.1, severity) / 10`` of the standard range, mixed as

    .. math:: x_{aug} = (1 - m)\, x + m \sum_i w_i\, \mathrm{chain}_i(x),\quad
              w \sim \mathrm{Dirichlet}(\alpha, \dots, \alpha),\ m \sim \mathrm{Beta}(\alpha, \alpha).

    Args:
        severity: 1..10, the largest magnitude (in tenths of the range).
        width: chains per image (>= 1).
        depth: operations per chain (>= 1), or -1 for 1 to 3 at random.
        alpha: the Dirichlet and Beta parameter (> 0).
        all_ops: add the operations that overlap ImageNet-C's corruptions.
        interpolation, fill, mean, std, pixel_range: as :class:`AutoAugment`.
    """

    def __init__(self, severity: int = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 all_ops: bool = False, interpolation: str = "bilinear", fill: float = 0.0,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 pixel_range: tuple[float, float] | None = None) -> None:
        if not 1 <= severity <= 10:
            raise ValueError(f"augmix: severity must be in 1..10, got {severity}")
        if width < 1:
            raise ValueError(f"augmix: width must be >= 1, got {width}")
        if depth == 0 or depth < -1:
            raise ValueError(f"augmix: depth must be >= 1, or -1 for 1 to 3 at random; got {depth}")
        if alpha <= 0:
            raise ValueError(f"augmix: alpha must be > 0, got {alpha}")
        super().__init__(interpolation, fill, mean, std, pixel_range)
        self.severity, self.width, self.depth, self.alpha, self.all_ops = severity, width, depth, alpha, all_ops
        self._names = AUGMIX_OPS + (("color", "contrast", "brightness", "sharpness") if all_ops else ())

    def augment(self, u, generator):
        n = u.shape[0]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = random.Random(seed)                  # Gamma draws (Dirichlet, Beta), replayed by the generator
        gam = torch.tensor([[rng.gammavariate(self.alpha, 1.0) for _ in range(self.width)] for _ in range(n)])
        w = (gam / gam.sum(1, keepdim=True)).to(u.dtype).view(n, self.width, 1, 1, 1)
        m = torch.tensor([rng.betavariate(self.alpha, self.alpha) for _ in range(n)], dtype=u.dtype).view(n, 1, 1, 1)
        mixed = torch.zeros_like(u)
        for i in range(self.width):
            depth = torch.randint(1, 4, (n,), generator=generator) if self.depth == -1 else torch.full((n,), self.depth)
            chain = u
            for step in range(int(depth.max())):
                ops = torch.randint(0, len(self._names), (n,), generator=generator)
                frac = (0.1 + torch.rand(n, generator=generator) * (self.severity - 0.1)) / 10
                stepped = self._apply(chain, self._names, ops, frac, generator, RANGES["standard"])
                chain = torch.where((step < depth).view(n, 1, 1, 1), stepped, chain)
            mixed = mixed + w[:, i] * chain
        return ((1 - m) * u + m * mixed).clamp(0, 1)

    def __repr__(self) -> str:
        return (f"AugMix(severity={self.severity}, width={self.width}, depth={self.depth}, alpha={self.alpha}, "
                f"all_ops={self.all_ops})")


# ------------------------------------------------------------------------------------------- functional forms
def _functional(name: str) -> Callable:
    def op(x: torch.Tensor, value: float | torch.Tensor = 0.0, fill: float = 0.0,
           interpolation: str = "nearest") -> torch.Tensor:
        _check_images(x, name)
        space = _PixelSpace(None, None, None)
        u = space.to_unit(x)
        v = torch.as_tensor(value, dtype=u.dtype).expand(x.shape[0]).clone()
        if name == "solarize":                        # the public form takes the threshold in grey levels
            v = v / 256
        names = (name,)
        out = apply_ops(u, torch.zeros(x.shape[0], dtype=torch.long), v, names, fill, interpolation)
        return space.from_unit(out, x)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = (f"PIL's {name} of a uint8 (0..255) or float ([0, 1]) batch (N, C, H, W), C 1 or 3, with "
                  f"parameter ``value`` (a number or one per image): see :mod:`traintricks.data.policies`.")
    return op


#: the operations as functions ``op(x, value, fill=0.0, interpolation="nearest")`` on uint8 or [0, 1] float
#: batches; ``value``: degrees (rotate), pixels (translate), the shear factor, the enhancers' factor, bits
#: (posterize), the threshold in grey levels 0..256 (solarize)
functional = {name: _functional(name) for name in OPS}


AUGMENTATIONS.register("autoaugment", AutoAugment, supplied=("mean", "std", "pixel_range"),
                       summary="AutoAugment: a published policy (imagenet, cifar10, svhn) of 25 sub-policies, one "
                               "per image (1805.09501).")
AUGMENTATIONS.register("randaugment", RandAugment, supplied=("mean", "std", "pixel_range"),
                       summary="RandAugment: num_ops random operations per image at one magnitude (1909.13719).")
AUGMENTATIONS.register("trivialaugment", TrivialAugment, supplied=("mean", "std", "pixel_range"),
                       summary="TrivialAugment: one random operation per image at a random magnitude (2103.10129).")
AUGMENTATIONS.register("augmix", AugMix, supplied=("mean", "std", "pixel_range"),
                       summary="AugMix: random chains of operations mixed with Dirichlet/Beta weights (1912.02781).")
