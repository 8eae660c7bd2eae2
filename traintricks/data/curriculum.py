"""Curriculum learning (Bengio, Louradour, Collobert & Weston 2009, "Curriculum learning"): examples ordered from
easy to hard by a difficulty score, and a **pacing function** ``g(t)`` that says which fraction of the ordered
data the sampler may draw from at training progress ``t`` in ``[0, 1]`` (Hacohen & Weinshall 2019, "On the power
of curriculum learning", arXiv:1904.03626; Platanios et al. 2019, "Competence-based curriculum learning",
arXiv:1903.09848):

- ``linear``:      ``g(t) = min(1, g0 + (1 - g0) t / T)``
- ``root``:        ``g(t) = min(1, sqrt(g0^2 + (1 - g0^2) t / T))``   (Platanios' square-root competence)
- ``exponential``: ``g(t) = min(1, g0 (1 / g0)^(t / T))``             (continuous form of Hacohen's fixed
  exponential pacing)
- ``step``:        ``g(t) = min(1, g0 + (1 - g0) floor(K t / T) / K)``  ("baby steps": K equal increments)

with ``g0 = start`` (the fraction available at the beginning) and ``T = full_at`` (the fraction of training after
which all data is used). Each mini-batch is drawn uniformly from the ``ceil(g(t) N)`` easiest examples, so an
epoch keeps its number of batches and learning-rate schedules are unaffected.

Difficulty: a score per training example, lower = easier, given in a file (``scores = "difficulty.safetensors"``,
a tensor named ``scores``) or computed as the per-example cross-entropy of a reference model (``reference =
"runs/teacher"``, a finished traintricks run: Hacohen & Weinshall's "transfer scoring").
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..registry import Registry
from .loader import TensorLoader

CURRICULA = Registry("curriculum pacing function", section="data", plural="curriculum pacing functions")


class Pacing:
    """A pacing function ``g(t)``: the fraction of the easy-to-hard ordered data available at progress ``t``."""

    def __init__(self, kind: str, start: float = 0.2, full_at: float = 0.5, steps: int = 4,
                 scores: str = "", reference: str = "") -> None:
        if not 0.0 < start <= 1.0:
            raise ValueError(f"start must be in (0, 1], got {start}")
        if not 0.0 < full_at <= 1.0:
            raise ValueError(f"full_at must be in (0, 1], got {full_at}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if bool(scores) == bool(reference):
            raise ValueError("scores or reference: give exactly one source of difficulty (a scores file, or the "
                             "directory of a finished run whose model's loss ranks the examples)")
        self.kind, self.start, self.full_at, self.steps = kind, start, full_at, steps
        self.scores, self.reference = scores, reference

    def __call__(self, t: float) -> float:
        g0, u = self.start, min(1.0, max(0.0, t) / self.full_at)
        if self.kind == "linear":
            g = g0 + (1 - g0) * u
        elif self.kind == "root":
            g = math.sqrt(g0 * g0 + (1 - g0 * g0) * u)
        elif self.kind == "exponential":
            g = g0 * (1 / g0) ** u
        else:
            g = g0 + (1 - g0) * math.floor(self.steps * u + 1e-12) / self.steps
        return min(1.0, g)

    def __repr__(self) -> str:
        src = f"scores={self.scores!r}" if self.scores else f"reference={self.reference!r}"
        return f"Pacing({self.kind!r}, start={self.start}, full_at={self.full_at}, {src})"


# one class, four pacing functions: each name binds Pacing's ``kind``; the options are Pacing's, with its defaults
CURRICULA.register("linear", Pacing, defaults={"kind": "linear"},
                   summary="Curriculum, linear pacing: g(t) = g0 + (1 - g0) t / T (Bengio 2009).")
CURRICULA.register("root", Pacing, defaults={"kind": "root"}, summary="Curriculum, square-root competence "
                   "g(t) = sqrt(g0^2 + (1 - g0^2) t / T) (Platanios 2019, 1903.09848).")
CURRICULA.register("exponential", Pacing, defaults={"kind": "exponential"}, summary="Curriculum, exponential pacing "
                   "g(t) = g0 (1/g0)^(t/T) (Hacohen & Weinshall 2019, 1904.03626).")
CURRICULA.register("step", Pacing, defaults={"kind": "step"},
                   summary="Curriculum, baby steps: K equal increments of the data by t = T.")


class CurriculumLoader(TensorLoader):
    """A :class:`TensorLoader` whose batches come from the easiest ``ceil(g(t) N)`` examples.

    Args:
        order: training-example indices from easiest to hardest (e.g. ``scores.argsort()``).
        pacing: ``g(t)``, ``t`` = (batches so far) / (``total_epochs`` x batches per epoch).
        total_epochs: the run's length, which ``t`` is measured against.
    Other arguments as :class:`TensorLoader` (``shuffle`` is implied; ``drop_last`` sets the epoch's length).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, order: torch.Tensor,
                 pacing: Callable[[float], float], total_epochs: int, **kwargs) -> None:
        super().__init__(x, y, batch_size, shuffle=True, **kwargs)
        order = torch.as_tensor(order, dtype=torch.long)
        if order.shape != (len(x),) or not torch.equal(order.sort().values, torch.arange(len(x))):
            raise ValueError(f"order must be a permutation of the {len(x)} training examples")
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
        self.order, self.pacing, self.total_epochs = order, pacing, total_epochs

    def available(self, epoch: int, batch: int) -> int:
        """How many of the easiest examples batch ``batch`` of epoch ``epoch`` draws from."""
        t = (epoch * len(self) + batch) / (self.total_epochs * len(self))
        return min(len(self.x), max(self.batch_size * self.world_size, math.ceil(self.pacing(t) * len(self.x))))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._begin_pass()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)      # shared by every rank
        aug = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 7919 + self.rank)
        gb = self.batch_size * self.world_size
        for b in range(len(self)):
            n = self.available(self.epoch, b)
            pick = torch.randperm(n, generator=g)[:gb] if n <= 4 * gb else torch.randint(n, (gb,), generator=g)
            idx = self.order[pick[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]]
            yield self.batch(idx, aug)


def load_scores(path: str | Path, n: int) -> torch.Tensor:
    """Per-example difficulty scores from a safetensors file (tensor ``scores``) or a ``torch.save``d tensor."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"curriculum.scores: {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            scores = load_file(str(path))["scores"]
        else:
            scores = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:             # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"curriculum.scores: {path} is not a readable scores file ({e})") from None
    scores = torch.as_tensor(scores).flatten().float()
    if len(scores) != n:
        raise ValueError(f"curriculum.scores: {path} has {len(scores)} scores but the training set has {n} examples "
                         "(after data.limit and the validation split)")
    if not torch.isfinite(scores).all():
        raise ValueError(f"curriculum.scores: {path} holds NaN or infinite scores")
    return scores


@torch.no_grad()
def reference_scores(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Per-example cross-entropy of ``model`` (eval mode) on ``(x, y)``: the difficulty of each example."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch]).float()
        out.append(torch.nn.functional.cross_entropy(logits, y[i:i + batch], reduction="none"))
    return torch.cat(out)
