"""Adversarial examples and adversarial training (Madry et al. 2018, arXiv:1706.06083; FGSM: Goodfellow et al.
2015, arXiv:1412.6572): :func:`pgd` / :func:`fgsm`, and :class:`AdversarialTraining`, a callback that trains on
adversarial inputs and measures ``robust_accuracy`` in evaluation.

**The attack** (L-inf, projected gradient ascent on the cross-entropy ``L`` of the prediction)::

    x_0 = clip(x + U(-eps, eps))     (random start; x_0 = x without)
    x_{k+1} = clip(Proj_{|x' - x|_inf <= eps}(x_k + alpha * sign(grad_x L(f(x_k), y))))     k < steps

``clip`` keeps the inputs in the data's range. FGSM is one step of size ``eps`` from ``x`` (``steps=1``,
``alpha=eps``, no random start). Shapes: ``x`` (N, C, ...) float, ``y`` (N,) class indices or (N, K) soft targets;
the result has ``x``'s shape and dtype, no graph. Only the input gradient is taken (``torch.autograd.grad``): the
parameters' ``.grad`` are untouched.

**Scales.** The pipeline standardizes inputs, ``x = (raw - mean_c) / std_c`` per channel, so a ball in raw pixels is
a box with a different half-width per channel in the model's inputs. ``eps`` and ``step_size`` are given as
fractions of the raw data range ``[lo, hi]`` (``8/255``: 8 grey levels of an 8-bit image; 0.5 of the 0-16 scale of
the digits), and converted with the run's ``mean``/``std``: ``eps_c = eps * (hi - lo) / std_c``; the clip bounds
are ``(lo - mean_c) / std_c`` and ``(hi - mean_c) / std_c``. The recipe supplies ``mean``, ``std`` and the raw range
of the training split; a hand-built callback takes them as arguments (default: unstandardized inputs in [0, 1]).

**Batch norm during the attack.** Madry et al. generated the examples with the model in training mode. Here the
attack runs the model in **eval mode** by default (``model_mode="eval"``): batch norm uses its running statistics
and dropout is off, so the ``steps`` forward passes of the attack do not move the running statistics (they would
count every intermediate point as a batch) and the attacked function is deterministic; the training forward pass
that follows (train mode, adversarial batch) updates them once. ``model_mode="train"`` follows Madry (batch
statistics, dropout on) with the buffers restored after the attack.

**Evaluation.** ``robust_accuracy`` is the fraction of (the first ``eval_examples`` of) the test split classified
correctly both clean and after a PGD attack of ``eval_steps`` steps (the attacked model is the evaluated one, e.g.
the weight EMA, without test-time augmentation), added to the ``test`` metrics (``test_robust_accuracy`` in the
record, the summary and the report). It is therefore at most the clean accuracy on the same examples.

Costs: ``steps`` extra forward and backward passes per training batch, ``eval_steps`` per evaluated batch.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..callback import Callback

__all__ = ["pgd", "fgsm", "AdversarialTraining", "attack_loss"]


def attack_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The attack's objective: cross-entropy summed over the batch (hard labels (N,) or soft targets (N, K))."""
    logits = logits.float()
    if y.ndim == logits.ndim:
        return -(y * F.log_softmax(logits, dim=-1)).sum()
    return F.cross_entropy(logits, y, reduction="sum")


def _as_tensor(v: Any, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return t.view(1, -1, *([1] * (x.ndim - 2))) if t.ndim == 1 and x.ndim >= 2 else t


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: Any,
        step_size: Any, steps: int = 10, random_start: bool = True, lo: Any = None, hi: Any = None,
        generator: torch.Generator | None = None, loss_fn: Callable = attack_loss) -> torch.Tensor:
    """L-inf PGD (module docstring) in the model's input units: ``eps``, ``step_size``, ``lo``, ``hi`` are numbers
    or per-channel sequences / tensors (broadcast over (N, C, ...)); ``lo``/``hi`` ``None``: no clip. ``forward``
    returns the logits. The random start is drawn on the CPU from ``generator`` (reproducible on any device).

    Raises ``ValueError`` for ``steps < 1`` or a negative ``eps``/``step_size``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    eps_t, alpha = _as_tensor(eps, x), _as_tensor(step_size, x)
    if (eps_t < 0).any() or (alpha < 0).any():
        raise ValueError(f"eps and step_size must be >= 0, got {eps}, {step_size}")
    lo_t = _as_tensor(lo, x) if lo is not None else None
    hi_t = _as_tensor(hi, x) if hi is not None else None

    def clip(v: torch.Tensor) -> torch.Tensor:
        v = torch.maximum(torch.minimum(v, x0 + eps_t), x0 - eps_t)
        if lo_t is not None:
            v = torch.maximum(v, lo_t)
        if hi_t is not None:
            v = torch.minimum(v, hi_t)
        return v

    x0 = x.detach()
    adv = x0.clone()
    if random_start:
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        adv = clip(x0 + (2 * u - 1) * eps_t)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(forward(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
        adv = clip(adv.detach() + alpha * grad.sign())
    return adv.detach()


def fgsm(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: Any,
         lo: Any = None, hi: Any = None, loss_fn: Callable = attack_loss) -> torch.Tensor:
    """The fast gradient sign method: ``clip(x + eps * sign(grad_x L))``, one PGD step of size ``eps``."""
    return pgd(forward, x, y, eps, eps, steps=1, random_start=False, lo=lo, hi=hi, loss_fn=loss_fn)


class AdversarialTraining(Callback):
    """Train on adversarial inputs (PGD or FGSM, replacing a share of each batch) and add ``robust_accuracy`` to
    the test metrics (module docstring).

    Args:
        attack: ``"pgd"`` or ``"fgsm"`` (training; evaluation always uses PGD).
        eps, step_size: L-inf radius and PGD step, as fractions of the raw data range (``8/255``, ``2/255``).
        steps: PGD steps in training (Madry et al.: 7 on CIFAR-10).
        random_start: start PGD at a uniform point of the ball.
        ratio: share of each batch replaced by its adversarial version (1: Madry; 0.5: half clean, half adversarial).
        eval_examples: test examples attacked for ``robust_accuracy`` (0: all; -1: no robust evaluation).
        eval_steps: PGD steps of the evaluation attack (step ``step_size``, random start).
        model_mode: ``"eval"`` (default: running statistics, no dropout) or ``"train"`` (Madry's: batch
            statistics, the buffers restored after the attack).
        seed: the random starts' seed (each training step's start is a function of ``seed`` and the step).
        mean, std, data_range: supplied by the recipe (the run's standardization and raw ``[lo, hi]``).

    Raises ``ValueError`` for an unknown attack or model mode, ``eps``/``step_size`` outside [0, 1], ``steps < 1``
    or ``ratio`` outside (0, 1]; at setup, a task other than classification."""

    name = "adversarial"

    def __init__(self, attack: str = "pgd", eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 7,
                 random_start: bool = True, ratio: float = 1.0, eval_examples: int = 1000, eval_steps: int = 10,
                 model_mode: str = "eval", seed: int = 0, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,), data_range: Sequence[float] = (0.0, 1.0)) -> None:
        if attack not in ("pgd", "fgsm"):
            raise ValueError(f"attack must be 'pgd' or 'fgsm', got {attack!r}")
        if model_mode not in ("eval", "train"):
            raise ValueError(f"model_mode must be 'eval' or 'train', got {model_mode!r}")
        for k, v in (("eps", eps), ("step_size", step_size)):
            if not 0 <= v <= 1:
                raise ValueError(f"{k} must be in [0, 1] (a fraction of the data range), got {v}")
        if steps < 1 or eval_steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}, eval_steps {eval_steps}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if len(data_range) != 2 or not data_range[0] < data_range[1]:
            raise ValueError(f"data_range must be [lo, hi] with lo < hi, got {list(data_range)}")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have one positive std per mean, got {list(mean)}, {list(std)}")
        self.attack, self.eps, self.step_size, self.steps = attack, eps, step_size, steps
        self.random_start, self.ratio = random_start, ratio
        self.eval_examples, self.eval_steps, self.model_mode, self.seed = eval_examples, eval_steps, model_mode, seed
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.lo, self.hi = float(data_range[0]), float(data_range[1])

    # ------------------------------------------------------------------ scales
    def bounds(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``eps``, ``step_size`` and the clip bounds in the model's (standardized) input units, per channel."""
        mean, std = torch.tensor(self.mean, dtype=torch.float64), torch.tensor(self.std, dtype=torch.float64)
        width = self.hi - self.lo
        out = {"eps": self.eps * width / std, "step_size": self.step_size * width / std,
               "lo": (self.lo - mean) / std, "hi": (self.hi - mean) / std}
        return {k: _as_tensor(v.to(x.dtype), x) for k, v in out.items()}

    def perturb(self, forward: Callable, x: torch.Tensor, y: torch.Tensor, steps: int, attack: str,
                generator: torch.Generator | None) -> torch.Tensor:
        b = self.bounds(x)
        if attack == "fgsm":
            return fgsm(forward, x, y, b["eps"], b["lo"], b["hi"])
        return pgd(forward, x, y, b["eps"], b["step_size"], steps, self.random_start, b["lo"], b["hi"], generator)

    def _run_attack(self, module, forward, x, y, steps, attack, generator):
        from ..optim.sam import frozen_buffers
        was = module.training
        module.train(self.model_mode == "train")
        try:
            with frozen_buffers(module if self.model_mode == "train" else None):
                return self.perturb(forward, x, y, steps, attack, generator)
        finally:
            module.train(was)

    _checked = False

    def _check_scale(self, x: torch.Tensor) -> None:
        """Once, on the first batch: the inputs, un-standardized with ``mean``/``std``, must lie in ``data_range``
        (else the epsilon ball and the clip are in the wrong units: e.g. the defaults (0, 1) and no
        standardization given for standardized data). One host read, in the data path, not the forward pass."""
        b = self.bounds(x)
        lo, hi = b["lo"], b["hi"]
        width = (hi - lo).abs()
        if bool(((x < lo - 0.01 * width) | (x > hi + 0.01 * width)).any()):
            raise ValueError(f"adversarial: the inputs lie outside data_range {(self.lo, self.hi)} once "
                             f"un-standardized with mean={self.mean}, std={self.std}: give the data's "
                             "standardization and raw range (mean=data.mean, std=data.std, data_range=data.pixel_range; "
                             "the recipe does this), or inputs in data_range")
        self._checked = True

    # ------------------------------------------------------------------ events
    def setup(self, trainer) -> None:
        if trainer.task.name != "classification":
            raise ValueError(f"adversarial: attacks the cross-entropy of a classifier; task {trainer.task.name!r} "
                             "is not classification")

    def on_before_forward(self, trainer) -> None:
        x, y, extras = trainer.batch
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"adversarial: the inputs must be a float tensor, got {type(x).__name__}")
        if not self._checked:
            self._check_scale(x)
        n = x.shape[0]
        k = n if self.ratio >= 1 else int(math.ceil(self.ratio * n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.global_step)
        adv = self._run_attack(trainer.model, trainer.model, x[:k], y[:k], self.steps, self.attack, g)
        x = adv if k == n else torch.cat([adv, x[k:].detach()])
        trainer.batch = (x, y, extras)

    def on_evaluate(self, trainer, split, metrics) -> None:
        if split != "test" or self.eval_examples < 0 or trainer.test_loader is None:
            return
        metrics["robust_accuracy"] = self.robust_accuracy(trainer, trainer.test_loader)

    def robust_accuracy(self, trainer, loader) -> float:
        """The share of (the first ``eval_examples`` of) ``loader``'s examples classified correctly clean and
        after a PGD attack of ``eval_steps`` steps on the evaluated model (seeded by ``seed``)."""
        module = trainer.eval_model
        forward = lambda v: trainer.output_fn(trainer.eval_forward(v))      # noqa: E731
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 999_983)
        robust, seen = torch.zeros((), dtype=torch.float64), 0
        for batch in loader:
            x, y, _ = trainer.batch_fn(batch)
            x, y = trainer.to_device(x, y)
            if self.eval_examples:
                x, y = x[:self.eval_examples - seen], y[:self.eval_examples - seen]
            if len(x) == 0:
                break
            was = module.training
            module.eval()
            try:
                with torch.no_grad():
                    clean = forward(x).argmax(-1) == y
                adv = self.perturb(forward, x, y, self.eval_steps, "pgd", g)        # eval mode, always
                with torch.no_grad():
                    robust += (clean & (forward(adv).argmax(-1) == y)).sum().double().cpu()
            finally:
                module.train(was)
            seen += len(y)
        return robust.item() / max(seen, 1)

    def __repr__(self) -> str:
        return (f"AdversarialTraining({self.attack}, eps={self.eps:.4g}, step_size={self.step_size:.4g}, "
                f"steps={self.steps}, ratio={self.ratio})")
