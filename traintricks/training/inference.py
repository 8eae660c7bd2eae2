"""A finished run's model, ready for new inputs: :func:`load_run`.

A run directory written by :func:`traintricks.run` / ``traintricks train`` holds ``config.toml``,
``model.safetensors`` and ``data_stats.json`` (written atomically when the run starts: the input shape, the class
names, the task, the per-channel / per-feature mean and standard deviation the inputs were standardized with, on
the source's own scale, and the regression targets' mean and standard deviation). :func:`load_run` rebuilds the
model from the config with the recorded shapes and loads the weights: the training data is not needed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.images import is_pil_image
from . import checkpoint as ckpt


@dataclass
class LoadedRun:
    """A trained model with what applying it needs (see :func:`load_run`).

    Attributes:
        model: the trained ``nn.Module``, in eval mode, on the CPU.
        config: the run's config (a dict, as in its ``config.toml``).
        class_names: the classes (classification), or the names of the model's outputs (regression targets,
            labels of a multi-label task).
        task: ``"classification"``, ``"regression"`` or ``"multilabel"``.
        input_shape: one example's shape, e.g. ``(3, 32, 32)`` or ``(F,)``.
        stats: the contents of ``data_stats.json``.
    """

    model: torch.nn.Module
    config: dict[str, Any]
    class_names: list[str]
    task: str
    input_shape: tuple[int, ...]
    stats: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def image_inputs(self) -> bool:
        """Whether the source gave uint8 images (then inputs are 0..255 uint8 or 0..1 floats, or image files)."""
        return self.stats.get("input_dtype") == "uint8" and len(self.input_shape) == 3

    def _read_images(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        from ..data.images import decode_image as _decode
        c = self.input_shape[0]
        size = int(self.stats.get("image_size", 0))
        out = []
        for p in paths:
            try:
                a = torch.from_numpy(_decode(p if is_pil_image(p) else Path(p), size, mode="L" if c == 1 else None))
            except (OSError, ValueError, SyntaxError) as e:
                raise ValueError(f"{p}: unreadable or corrupt image ({e})") from None
            a = a[None].expand(c, -1, -1) if a.ndim == 2 else a.permute(2, 0, 1)
            if tuple(a.shape) != self.input_shape:
                raise ValueError(f"{p}: decoded to {tuple(a.shape)}, the model takes {self.input_shape} (the run had "
                                 f"data.image_size = {size}; resize the image to {self.input_shape[2]}x"
                                 f"{self.input_shape[1]})")
            out.append(a)
        return torch.stack(out).contiguous()

    def standardize(self, inputs: Any) -> torch.Tensor:
        """Raw inputs -> the float32 ``(N, *input_shape)`` batch the model was trained on: ``(x - mean) / std`` with
        the run's saved per-channel (per-feature) statistics. See :meth:`predict` for what ``inputs`` may be."""
        if isinstance(inputs, (str, os.PathLike)) or is_pil_image(inputs):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(p, (str, os.PathLike)) or is_pil_image(p)
                                                                for p in inputs):
            if not self.image_inputs:
                raise TypeError(f"image paths given, but this run's data ({self.stats.get('dataset')!r}) is not "
                                f"images; give a float tensor of shape (N, {', '.join(map(str, self.input_shape))})")
            x = self._read_images(inputs)
        else:
            x = torch.as_tensor(inputs)
        if x.is_complex() or not (x.is_floating_point() or x.dtype == torch.uint8 or x.dtype in
                                  (torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)):
            raise TypeError(f"inputs: expected a real tensor, got dtype {x.dtype}")
        if tuple(x.shape) == self.input_shape:
            x = x[None]
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"inputs: shape {tuple(x.shape)}; the model takes (N, "
                             f"{', '.join(map(str, self.input_shape))}) (or one example of {self.input_shape})")
        if self.image_inputs and x.is_floating_point():
            # torchvision's convention (to_tensor): images as floats in 0..1; the statistics are on 0..255
            if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
                raise ValueError("inputs: float images must be in 0..1 (or give uint8 values 0..255); got values "
                                 f"in {float(x.min()):.3g}..{float(x.max()):.3g}")
            x = x.float() * 255
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(self.stats["mean"], dtype=torch.float32).reshape(shape)
        std = torch.tensor(self.stats["std"], dtype=torch.float32).reshape(shape)
        return ((x.float() - mean) / std).contiguous()

    @torch.no_grad()
    def predict(self, inputs: Any, batch_size: int = 1000) -> torch.Tensor:
        """The model's outputs for raw ``inputs``, float32 ``(N, outputs)`` (logits for classification: ``argmax``
        indexes :attr:`class_names`; targets on their own scale for regression, un-standardized with the run's
        saved target mean and standard deviation; logits for multi-label). No test-time augmentation.

        ``inputs``: a tensor (or array) of shape ``(N, *input_shape)``, or one example ``input_shape`` (then
        ``N = 1``), on the scale the data source gives before standardization: for image sources (``folder``,
        ``cifar10``, ``fashion_mnist``: uint8 images) a uint8 tensor of 0..255 values or a float tensor of 0..1
        values (refused with ``ValueError`` outside 0..1); for tables and arrays the raw feature values. Image runs
        also take a list of image file paths or Pillow images (or one of either), decoded like the training images (Pillow, ``data.image_size`` resize
        and centre crop, grey or RGB as the model takes). Raises ``ValueError`` for a wrong shape or an unreadable
        image, ``TypeError`` for paths given to a run whose data are not images."""
        x = self.standardize(inputs)
        self.model.eval()
        outs = [self.model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        out = torch.cat(outs) if outs else torch.empty(0, len(self.class_names))
        if self.task == "regression" and self.stats.get("target_mean"):
            out = out * torch.tensor(self.stats["target_std"]) + torch.tensor(self.stats["target_mean"])
        return out


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """Load a finished run (``traintricks train --out DIR``, :func:`traintricks.run`) for inference.

    The model is built from the run's ``config.toml`` with the input shape and output count recorded in its
    ``data_stats.json`` (no training data is read), its ``model.safetensors`` weights loaded, and put in eval mode.
    ``load_run(dir).predict(inputs)`` standardizes raw inputs with the run's saved statistics and returns the
    outputs (see :meth:`LoadedRun.predict`).

    Raises :class:`~traintricks.training.checkpoint.CheckpointError` naming the missing file when ``run_dir`` holds
    no finished run (no ``model.safetensors``), or no ``data_stats.json`` (a run from before it was written).
    """
    from ..config import ConfigError
    from .recipe import load_run_model
    run_dir = Path(run_dir)
    stats_file = run_dir / "data_stats.json"
    if not stats_file.is_file():
        missing = "config.toml" if not (run_dir / "config.toml").is_file() else "data_stats.json"
        raise ckpt.CheckpointError(f"{run_dir / missing}: not found; give the directory of a traintricks run "
                                   f"(data_stats.json, the saved input statistics, is written when a run starts)")
    stats = json.loads(stats_file.read_text())
    in_shape = tuple(int(v) for v in stats["input_shape"])
    try:
        model, cfg = load_run_model(run_dir, in_shape, int(stats["num_classes"]))
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{run_dir}: cannot rebuild the run's model: {e}") from None
    return LoadedRun(model=model.cpu().eval(), config=cfg, class_names=list(stats["class_names"]),
                     task=stats["task"], input_shape=in_shape, stats=stats, run_dir=run_dir)
