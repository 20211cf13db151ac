"""Vanilla knowledge distillation (Hinton et al. 2015) from one frozen teacher."""

from __future__ import annotations

import torch
from torch import nn

from kdrun.losses import cross_entropy, kd_loss
from kdrun.strategies.base import Batch, StepOutput, Strategy


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (fixed BatchNorm statistics) and no gradients, for good."""
    model.eval()
    model.requires_grad_(False)
    return model


class KD(Strategy):
    name = "kd"

    def __init__(self, student: nn.Module, teacher: nn.Module, *, alpha: float, beta: float, T: float,
                 teacher_summary: dict | None = None):
        super().__init__(student)
        self.teacher = freeze(teacher)
        self.alpha, self.beta, self.T = alpha, beta, T
        self.teacher_summary = teacher_summary or {}

    def step(self, batch: Batch) -> StepOutput:
        with torch.no_grad():
            teacher_logits = self.teacher(batch.x)
        logits = self.student(batch.x)
        return StepOutput(
            logits,
            {
                "ce": self.alpha * cross_entropy(logits, batch.y),
                "kd": self.beta * kd_loss(logits, teacher_logits, self.T),
            },
        )

    def summary(self) -> dict:
        return dict(self.teacher_summary)
