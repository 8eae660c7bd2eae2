"""Progressive resizing (fast.ai's DAWNBench recipe, Howard et al. 2018): train the first epochs on smaller images
and the last ones at full size, as a callback that resizes each training batch before its forward pass.

Schedule: ``sizes = [s_1, ..., s_k]`` with ``epochs = [e_1, ..., e_k]``: the first ``e_1`` epochs at ``s_1``
pixels, the next ``e_2`` at ``s_2``, ..., every later epoch at the data's own size (so the final epochs are at full
size; a size at or above the full size leaves the batch as it is). ``s`` is the new height in pixels (an integer),
or a fraction of the data's height (a float in (0, 1): ``round(s * H)`` pixels, so that one schedule suits images
of any size); ``1`` or ``1.0`` is full size in either form. The width keeps the aspect ratio,
``round(s * W / H)``. Sizes grow; after a full-size stage (1.0) a schedule may start again from a small size, as at
a ``multicycle`` restart: ``sizes = [0.72, 1.0, 0.72], epochs = [4, 3, 4]`` (or ``[20, 1.0, 20]`` in pixels) trains
epochs 1-4 and 8-11 at 0.72 of the height, the others at full size. The batch ``(N, C, H, W)`` float is resized
on the device with ``F.interpolate(mode, antialias=True)`` (bilinear by default: a smooth downsampling, as loading
smaller images would give), **after** the loader's augmentations (crop, flip, cutout... act at full size) and
before any other ``on_before_forward`` callback listed after it (list ``progressive_resizing`` before
``adversarial``, so that the attack is made on the image the model sees). Evaluation is untouched: at full size,
with flip TTA when asked.

The model must accept every size: a network ending in global pooling does (the ``cnn`` and ``resnet`` models), one
with a flattening linear layer does not. At the first resized batch the callback runs the model (eval mode, no
gradient, one example) at the schedule's smallest size and at full size and refuses it with ``ValueError`` naming
the model and the size when either fails or the outputs' shapes differ.

Runs of another length (``run_epochs``): stages planned for a run of ``run_epochs`` epochs are rescaled to the
run's ``E`` epochs as ``multicycle`` rescales its cycles: stage ``k`` ends at ``E * (e_1 + ... + e_k) / run_epochs``
epochs, which may fall inside an epoch (as a cycle's end does: multicycle counts steps). An epoch overlapping
several stages takes the largest of their sizes, full size when it overlaps a full-size stage or reaches past the
schedule, so small images never outlast their span (a restart's small images never start before the restart,
nor does the previous cycle's cool-down end on them); the last epoch is always at full size. The default recipe
plans its first cycle's four epochs at 0.72 of the height (20 of Fashion-MNIST's 28 pixels) for its 23 epochs,
so ``--set epochs=12`` resizes two, and a run of a few epochs none. With ``run_epochs = 0`` (the default) the
stages are taken as given, and stages covering the whole run are refused unless the last is full size (1.0).

``strict = False`` (the default recipe's): a model that does not accept the smaller sizes, or inputs that are not
float images (N, C, H, W), are trained at full size as they are, with one warning, instead of raising.

Each epoch's record gets ``image_size`` (the height trained on).
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import warn
from ..callback import Callback

__all__ = ["ProgressiveResizing"]


def _example_input(loader: Any) -> torch.Tensor | None:
    """The first training input, (1, C, H, W) float, when ``loader`` holds its inputs as such a tensor and batches
    them as they are (a ``TensorLoader`` with no transform or this package's augmentations, which keep the shape; a
    plain ``DataLoader`` over a ``TensorDataset``), else None. Nothing is iterated (a user's loader may start
    workers or draw random numbers), and anything a transform or a collate function might reshape is left to the
    first batch."""
    from .augment import BatchTransform, Compose, Mixup
    ours = (BatchTransform, Mixup)
    x = getattr(loader, "x", None)
    if isinstance(x, torch.Tensor):
        t = getattr(loader, "transform", None)
        shape_kept = t is None or isinstance(t, ours) or isinstance(t, Compose) and \
            all(isinstance(a, ours) for a in t.augs)
        if not shape_kept:
            return None
    else:
        dataset = getattr(loader, "dataset", None)
        plain = isinstance(loader, torch.utils.data.DataLoader) and \
            loader.collate_fn is torch.utils.data.default_collate
        x = dataset.tensors[0] if plain and isinstance(dataset, torch.utils.data.TensorDataset) else None
    if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point() and len(x):
        return x[:1]
    return None


class ProgressiveResizing(Callback):
    """Grow the training images' size over the epochs (module docstring).

    Args:
        sizes: the heights of the first stages, in pixels (``[16, 24]``) or as fractions of the data's height
            (``[0.5, 0.75]``; 1.0: full size, after which the sizes may start small again).
        epochs: how many epochs each stage lasts (same length as ``sizes``), e.g. ``[2, 2]``.
        mode: ``F.interpolate``'s mode (``"bilinear"``, ``"bicubic"``, ``"area"``, ``"nearest"``).
        run_epochs: the run length the stages are planned for (0: as given); on a run of another length the stage
            boundaries are rescaled in proportion (module docstring).
        strict: raise (True) or warn once and train at full size (False) for a model that does not accept the
            smaller sizes or inputs that are not float images.

    Raises ``ValueError`` for sizes or epoch counts < 1, lists of different lengths, sizes that shrink other than
    after a full-size stage (1.0), an unknown mode or
    ``run_epochs < 0``; with ``run_epochs = 0``, when the stages cover the whole run without ending at full size;
    when ``strict``, for inputs other than (N, C, H, W) float or a model that does not accept the sizes: when the
    trainer is built if its training loader shows an example without being iterated (a
    :class:`~traintricks.data.TensorLoader`, a ``DataLoader`` over a ``TensorDataset``), else at the first resized
    batch."""

    name = "progressive_resizing"
    MODES = ("bilinear", "bicubic", "area", "nearest")

    def __init__(self, sizes: list[int] | list[float] = (16, 24), epochs: list[int] = (1, 1),
                 mode: str = "bilinear", run_epochs: int = 0, strict: bool = True) -> None:
        sizes, epochs = list(sizes), [int(e) for e in epochs]
        if not sizes or len(sizes) != len(epochs):
            raise ValueError(f"sizes and epochs must be non-empty lists of one length, got {sizes}, {epochs}")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in sizes):
            raise ValueError(f"sizes must be numbers: pixels (integers) or fractions of the data's height (floats "
                             f"in (0, 1]), got {sizes}")
        # 1 (or 1.0) is full size in either form (a 1-pixel image is never meant): 1.0 in a schedule of pixels
        sizes = [1.0 if v == 1 else v for v in sizes]
        rest = [v for v in sizes if v != 1.0]
        fraction = any(isinstance(v, float) for v in rest)
        if fraction and not all(isinstance(v, float) for v in rest):
            raise ValueError(f"sizes must be all pixels (integers) or all fractions of the data's height (floats "
                             f"in (0, 1]), with 1.0 for full size in either, got {sizes}")
        if fraction and not all(0.0 < v < 1.0 for v in rest):
            raise ValueError(f"sizes as fractions of the data's height must be in (0, 1] (1.0: full size), got "
                             f"{sizes} (pixels are integers)")
        if min(sizes) <= 0 or min(epochs) < 1:
            raise ValueError(f"sizes and epochs must be >= 1, got {sizes}, {epochs}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if any(a != 1.0 and b != 1.0 and b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"sizes must grow ({sizes}): small images first, full size last (they may start "
                             "again from a small size after a full-size stage, 1.0, e.g. at a multicycle restart: "
                             "[0.72, 1.0, 0.72] or, in pixels, [20, 1.0, 20])")
        if isinstance(run_epochs, bool) or not isinstance(run_epochs, int) or run_epochs < 0:
            raise ValueError(f"run_epochs must be an integer >= 0 (0: the stages as given), got {run_epochs!r}")
        self.sizes, self.epochs, self.mode = sizes, epochs, mode
        self.resized = rest                   # the sizes that resize (1.0 is full size)
        self.run_epochs, self.strict = run_epochs, bool(strict)
        # where each stage ends, in epochs of this run (setup rescales them: fractional when run_epochs is set)
        self.ends: list[float] = [float(e) for e in itertools.accumulate(epochs)]
        self.last: int | None = None          # with run_epochs: the run's last epoch, always at full size
        self.disabled = False                 # strict=False and the model or inputs refused the sizes
        self.checked = False
        self.full: int | None = None          # the data's own height, once a batch was seen

    @staticmethod
    def pixels(size: int | float, height: int) -> int:
        """A size of the schedule in pixels for images ``height`` pixels high (a float is a fraction of it)."""
        return max(1, round(size * height)) if isinstance(size, float) else size

    def size_at(self, epoch: int) -> int | float | None:
        """The size trained on in ``epoch`` (0-based), as given in ``sizes`` (1.0: full size); ``None``: full size,
        after the schedule. An epoch that overlaps several stages' (rescaled) spans takes the largest of their
        sizes, full size when it reaches past the schedule: small images never outlast their planned span."""
        if self.disabled or epoch == self.last:
            return None
        overlapped, start = [], 0.0
        for s, end in zip(self.sizes, self.ends):
            if start < epoch + 1 and end > epoch:
                overlapped.append(s)
            start = end
        if not overlapped or epoch + 1 > self.ends[-1]:
            return None
        return 1.0 if 1.0 in overlapped else max(overlapped)

    def resizes(self, epochs: int) -> bool:
        """Whether any of a run's ``epochs`` (after ``setup``) trains on resized images."""
        return any(self.size_at(e) not in (None, 1.0) for e in range(epochs))

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
                for s in (self.pixels(min(self.resized or [1.0]), x.shape[-2]), x.shape[-2]):
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
        if self.run_epochs:
            # multicycle's rescaling of its cycles (a boundary may fall inside an epoch: size_at), the last epoch
            # kept at full size
            self.ends = [trainer.epochs * c / self.run_epochs for c in itertools.accumulate(self.epochs)]
            self.last = max(trainer.epochs - 1, 0)
        elif sum(self.epochs) >= trainer.epochs and self.size_at(trainer.epochs - 1) != 1.0:
            raise ValueError(f"progressive_resizing: its stages cover {sum(self.epochs)} epochs of the run's "
                             f"{trainer.epochs}: the run would never train at full size (evaluation is at full size); "
                             "give the stages fewer epochs or the run more, or set run_epochs (the run length the "
                             "stages are planned for: they are then rescaled to the run)")
        # tried now, when the trainer is built, on an example its loader shows without being iterated
        example = _example_input(getattr(trainer, "train_loader", None))
        if example is not None and self.resizes(trainer.epochs):
            self.check(trainer, example.to(getattr(trainer, "device", example.device)))

    def on_before_forward(self, trainer) -> None:
        x, y, extras = trainer.batch
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            self.full = int(x.shape[-2])
        size = self.size_at(trainer.epoch)
        if size is None or size == 1.0:         # full size: nothing to resize, nothing to check
            return
        if not self.check(trainer, x):
            return
        size = self.pixels(size, x.shape[-2])
        trainer.batch = (self.resize(x, size), y, extras)

    def check(self, trainer, x: torch.Tensor) -> bool:
        """Try the schedule on example inputs ``x`` (a batch, or zeros of the data's shape: the recipe calls this
        when the run is built): float images (N, C, H, W) and a model whose output has one shape at the smallest
        size and at full size. Returns whether the batches will be resized; when not, raises ``ValueError``
        (``strict``) or warns once and leaves the batches as they are. Warns when the sizes are not below the
        images' (in pixels, or when ``strict``). Once a check has passed, returns True at once."""
        if self.disabled:
            return False
        if self.checked:
            return True
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            self._refuse(f"progressive_resizing needs float image batches (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            return False
        height = x.shape[-2]
        big = sorted({self.pixels(v, height) for v in self.resized if self.pixels(v, height) >= height})
        if big and (self.strict or not isinstance(self.resized[0], float)):
            warn(f"progressive_resizing: size{'s' if len(big) > 1 else ''} {', '.join(map(str, big))} "
                 f"{'are' if len(big) > 1 else 'is'} not below the images' {height} pixels: those epochs train at "
                 "full size (choose sizes below the data's)")
        try:
            self._check(trainer, x)
        except ValueError as e:
            message = str(e)
        else:
            return True
        self._refuse(message)            # outside the except: one message, not a chained pair
        return False

    def _refuse(self, message: str) -> None:
        """Raise (``strict``), or train at full size from here on with one warning."""
        if self.strict:
            raise ValueError(message)
        self.disabled = True
        warn(f"{message}; the batches are trained on as they are instead (progressive_resizing: "
             "strict = false; leave progressive_resizing out of callbacks to silence this)")

    def on_train_epoch_end(self, trainer, record) -> None:
        size = self.size_at(trainer.epoch)
        full = self.full
        if size is not None and full is not None:
            size = self.pixels(size, full)
        if size is not None or full is not None:
            record["image_size"] = min(size, full) if size is not None and full is not None else (size or full)

    def __repr__(self) -> str:
        return (f"ProgressiveResizing(sizes={self.sizes}, epochs={self.epochs}, mode={self.mode!r}, "
                f"run_epochs={self.run_epochs}, strict={self.strict})")
