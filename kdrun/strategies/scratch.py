"""Train one model on the labels: teachers and from-scratch baselines."""

from __future__ import annotations

from kdrun.losses import cross_entropy
from kdrun.strategies.base import Batch, StepOutput, Strategy


class Scratch(Strategy):
    name = "scratch"

    def step(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        return StepOutput(logits, {"ce": cross_entropy(logits, batch.y)})
