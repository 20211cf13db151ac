"""Train one model on the labels: teachers and from-scratch baselines."""

from __future__ import annotations

import torch

from kdrun.losses import cross_entropy
from kdrun.strategies.base import StepOutput, Strategy


class Scratch(Strategy):
    name = "scratch"

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        logits = self.student(x)
        return StepOutput(logits, {"ce": cross_entropy(logits, y)})
