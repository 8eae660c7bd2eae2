"""Progressive resizing (fast.ai's DAWNBench recipe, Howard et al. 2018): train the first epochs on smaller images
and the last ones at full size, as a callback that resizes each training batch before its forward pass.

Schedule: ``sizes = [s_1, ..., s_k]`` with ``epochs = [e_1, ..., e_k]``: the first ``e_1`` epochs at ``s_1``
pixels, the next ``e_2`` at ``s_2``, ..., every later epoch at the data's own size (so the final epochs are at full
size; a size at or above the full size leaves the batch as it is). ``s`` is the new height; the width keeps the
aspect ratio, ``round(s * W / H)``. The batch ``(N, C, H, W)`` float is resized on the device with
``F.interpolate(mode, antialias=True)`` (bilinear by default: a smooth downsampling, as loading smaller images
would give), **after** the loader's augmentations (crop, flip, cutout... act at full size) and before any other
``on_before_forward`` callback listed after it (list ``progressive_resizing`` before ``adversarial``, so that the
attack is made on the image the model sees). Evaluation is untouched: at full size, with flip TTA when asked.

The model must accept every size: a network ending in global pooling does (the ``cnn`` and ``resnet`` models), one
with a flattening linear layer does not. At the first resized batch the callback runs the model (eval mode, no
gradient, one example) at the schedule's smallest size and at full size and refuses it with ``ValueError`` naming
the model and the size when either fails or the outputs' shapes differ.

Each epoch's record gets ``image_size`` (the height trained on).
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ..callback import Callback

__all__ = ["ProgressiveResizing"]


class ProgressiveResizing(Callback):
    """Grow the training images' size over the epochs (module docstring).

    Args:
        sizes: the heights of the first stages, e.g. ``[16, 24]``.
        epochs: how many epochs each stage lasts (same length as ``sizes``), e.g. ``[2, 2]``.
        mode: ``F.interpolate``'s mode (``"bilinear"``, ``"bicubic"``, ``"area"``, ``"nearest"``).

    Raises ``ValueError`` for sizes or epoch counts < 1, lists of different lengths or an unknown mode; at the first
    resized batch, for inputs other than (N, C, H, W) or a model that does not accept the sizes."""

    name = "progressive_resizing"
    MODES = ("bilinear", "bicubic", "area", "nearest")

    def __init__(self, sizes: list[int] = (16, 24), epochs: list[int] = (1, 1), mode: str = "bilinear") -> None:
        sizes, epochs = [int(s) for s in sizes], [int(e) for e in epochs]
        if not sizes or len(sizes) != len(epochs):
            raise ValueError(f"sizes and epochs must be non-empty lists of one length, got {sizes}, {epochs}")
        if min(sizes) < 1 or min(epochs) < 1:
            raise ValueError(f"sizes and epochs must be >= 1, got {sizes}, {epochs}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"progressive_resizing: sizes must grow ({sizes}): small images first, full size last")
        self.sizes, self.epochs, self.mode = sizes, epochs, mode
        self.checked = False
        self.full: int | None = None          # the data's own height, once a batch was seen

    def size_at(self, epoch: int) -> int | None:
        """The height trained on in ``epoch`` (0-based); ``None``: full size."""
        end = 0
        for s, e in zip(self.sizes, self.epochs):
            end += e
            if epoch < end:
                return s
        return None

    def resize(self, x: torch.Tensor, size: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        if size >= h:
            return x
        out = (size, max(1, round(size * w / h)))
        kw: dict[str, Any] = {"antialias": True} if self.mode in ("bilinear", "bicubic") else {}
        if self.mode in ("bilinear", "bicubic"):
            kw["align_corners"] = False
        return F.interpolate(x, size=out, mode=self.mode, **kw)

    def _check(self, trainer, x: torch.Tensor) -> None:
        model = trainer.model
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                outs = {}
                for s in (min(self.sizes), x.shape[-2]):
                    try:
                        outs[s] = trainer.output_fn(model(self.resize(x[:1], s))).shape
                    except RuntimeError as e:
                        raise ValueError(f"progressive_resizing: model {type(model).__name__} does not accept "
                                         f"{s}-pixel inputs ({str(e).splitlines()[0]}); it needs global pooling "
                                         "before its classifier (e.g. nn.AdaptiveAvgPool2d)") from None
        finally:
            model.train(was)
        if len(set(outs.values())) != 1:
            raise ValueError(f"progressive_resizing: model {type(model).__name__}'s output shape depends on the "
                             f"input size ({outs}); it needs global pooling before its classifier")
        self.checked = True

    def setup(self, trainer) -> None:
        if sum(self.epochs) >= trainer.epochs:
            raise ValueError(f"progressive_resizing: its schedule covers {sum(self.epochs)} epochs of the run's "
                             f"{trainer.epochs}: the run would never train at full size (evaluation is at full size); "
                             "shorten epochs")

    def on_before_forward(self, trainer) -> None:
        x, y, extras = trainer.batch
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            self.full = int(x.shape[-2])
        size = self.size_at(trainer.epoch)
        if size is None:
            return
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"progressive_resizing needs float image batches (N, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not self.checked:
            if size >= x.shape[-2]:
                warnings.warn(f"progressive_resizing: size {size} is not below the images' {x.shape[-2]} pixels: "
                              "those epochs train at full size (choose sizes below the data's)", stacklevel=2)
            self._check(trainer, x)
        trainer.batch = (self.resize(x, size), y, extras)

    def on_train_epoch_end(self, trainer, record) -> None:
        size = self.size_at(trainer.epoch)
        full = self.full
        if size is not None or full is not None:
            record["image_size"] = min(size, full) if size is not None and full is not None else (size or full)

    def __repr__(self) -> str:
        return f"ProgressiveResizing(sizes={self.sizes}, epochs={self.epochs}, mode={self.mode!r})"
