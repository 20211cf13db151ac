"""What every way of training shares: one batch in, logits and named loss terms out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass
class StepOutput:
    logits: torch.Tensor  # the student's, for train accuracy
    losses: dict[str, torch.Tensor]  # weighted terms; the trainer minimises their sum


class Strategy:
    """One way of training. The trainer knows nothing about distillation: it asks a
    strategy for the loss of a batch and which parameters to optimise."""

    name = "base"

    def __init__(self, student: nn.Module):
        self.student = student  # trained, evaluated and checkpointed

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.student.parameters()

    def train(self) -> None:
        self.student.train()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def summary(self) -> dict:
        """Extra facts for metrics.json (e.g. the teacher's accuracy)."""
        return {}
