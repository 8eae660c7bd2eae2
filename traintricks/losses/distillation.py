"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531).

The student's logits ``s`` learn from the teacher's ``t`` softened by a temperature ``T`` and from the labels:

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, softmax(s))

The ``T^2`` keeps the soft term's gradient magnitude independent of ``T`` (its gradient scales as ``1/T^2``).
"""
from __future__ import annotations

import torch
from torch import nn

from .classification import check_logits_target, check_reduction, cross_entropy


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float = 4.0,
                      alpha: float = 0.9, reduction: str = "mean") -> torch.Tensor:
    """The module docstring's ``L`` per example (shapes as :class:`CrossEntropy`: student and teacher logits
    (N, C[, d1, ...]), class-index or soft targets), reduced; in the student's dtype (the teacher's logits are
    cast to it)."""
    if student.shape != teacher.shape:
        raise ValueError(f"distillation: student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} differ in shape")
    t, c = temperature, (1 if student.ndim >= 2 else 0)
    log_ps = torch.log_softmax(student / t, dim=c)
    log_pt = torch.log_softmax(teacher.to(student.dtype) / t, dim=c)
    soft = (log_pt.exp() * (log_pt - log_ps)).sum(c) * t * t
    hard = cross_entropy(student, target, reduction="none", check=False)
    per = alpha * soft + (1 - alpha) * hard
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()


class Distillation(nn.Module):
    """``forward(student_logits, target, teacher_logits)``; with a ``teacher`` module and the ``student``
    model given, ``forward(student_logits, target)`` runs the teacher on the student's input itself."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, teacher: nn.Module | None = None,
                 student: nn.Module | None = None, reduction: str = "mean", *, validate: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.reduction = check_reduction("Distillation", reduction)
        self.validate = bool(validate)
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self._inputs: list[torch.Tensor] = []
        if teacher is not None:
            if student is None:
                raise ValueError("Distillation with a teacher module needs the student model to see its inputs")
            student.register_forward_pre_hook(lambda _m, args: self._inputs.__setitem__(slice(None), [args[0]]))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()                # the teacher always predicts in inference mode
        return self

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None):
        check_logits_target("Distillation", logits, target, validate=self.validate)
        if teacher_logits is None:
            if self.teacher is None or not self._inputs:
                raise ValueError("Distillation: no teacher logits given and no teacher model to compute them")
            with torch.no_grad():
                teacher_logits = self.teacher(self._inputs[0])
        return distillation_loss(logits, teacher_logits, target, self.temperature, self.alpha, self.reduction)

