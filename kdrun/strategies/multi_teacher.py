"""Distillation from several frozen teachers whose softened outputs are combined."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdrun.losses import confidence_weights, mixture_logits
from kdrun.strategies.base import Batch, StepOutput, Strategy
from kdrun.strategies.kd import freeze
from kdrun.strategies.objectives import Objective

COMBINES = ("mean", "weighted", "confidence")


class TeacherEnsemble(nn.Module):
    """Frozen teachers combined by a plain average, fixed weights, or per-sample confidence
    (each teacher's top-class probability, normalised over teachers) of their softened outputs.

    Called as a model it gives the ensemble's own prediction (T=1), for its test accuracy.
    """

    def __init__(self, teachers: list[nn.Module], combine: str, weights: list[float] | None = None):
        super().__init__()
        self.teachers = nn.ModuleList(freeze(t) for t in teachers)
        self.combine = combine
        fixed = torch.tensor(weights if combine == "weighted" else [1.0] * len(teachers), dtype=torch.float32)
        self.register_buffer("weights", fixed / fixed.sum())

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)  # teachers stay in eval mode, whoever asks

    def logits(self, x: Tensor, T: float) -> Tensor:
        """Logits whose softmax at temperature T is the combined softened distribution."""
        with torch.no_grad():
            per_teacher = [teacher(x) for teacher in self.teachers]
            weights = confidence_weights(per_teacher) if self.combine == "confidence" else self.weights
            return mixture_logits(per_teacher, weights, T)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x, 1.0)


class MultiTeacher(Strategy):
    name = "multi_teacher"

    def __init__(self, student: nn.Module, ensemble: TeacherEnsemble, objective: Objective,
                 teacher_summary: dict | None = None):
        super().__init__(student)
        self.ensemble = ensemble
        self.objective = objective
        self.teacher_summary = teacher_summary or {}

    def step(self, batch: Batch) -> StepOutput:
        teacher_logits = self.ensemble.logits(batch.x, self.objective.T)
        logits = self.student(batch.x)
        return StepOutput(logits, self.objective(logits, teacher_logits, batch.y, batch.epoch))

    def summary(self) -> dict:
        return dict(self.teacher_summary)
