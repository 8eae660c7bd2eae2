"""Decoding one image file with Pillow the way every image source does (the ``folder`` source, its streaming
loader, and :func:`traintricks.load_run`'s ``predict`` on image paths): grey or RGB, resized and centre-cropped."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def is_grey(im: Any) -> bool:
    """Whether a Pillow image is grey: modes 1, L, LA, I, I;16, F, or a palette whose colours are all grey."""
    return im.mode in ("1", "L", "LA", "I", "I;16", "F") or (
        im.mode == "P" and all(r == g == b for r, g, b in zip(*[iter(im.getpalette() or [0, 0, 0])] * 3)))


def is_pil_image(obj: Any) -> bool:
    """Whether ``obj`` is a Pillow image (an open ``PIL.Image.Image``)."""
    from PIL import Image
    return isinstance(obj, Image.Image)


def decode_image(path: str | Path | Any, image_size: int, mode: str | None = None) -> np.ndarray:
    """One image (a file, or an open Pillow image) as a uint8 (H, W) (grey) or (H, W, 3) (colour) array, resized
    (shorter side) and centre-cropped to ``image_size`` when it is > 0; ``mode="L"`` converts colour images to
    grey."""
    from PIL import Image
    from contextlib import nullcontext
    with (nullcontext(path) if is_pil_image(path) else Image.open(path)) as im:
        im.load()
        target = mode or ("L" if is_grey(im) else "RGB")
        if im.mode != target:
            im = im.convert(target)
        if image_size:
            w, h = im.size
            scale = image_size / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        return np.asarray(im, dtype=np.uint8).copy()
