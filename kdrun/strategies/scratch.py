"""Train one model on the labels: teachers and from-scratch baselines."""

from __future__ import annotations

from kdrun.losses import cross_entropy
from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.sources.students import build_student


@register
class Scratch(Strategy):
    name = "scratch"
    distills = False
    transfer_set = "labelled"  # the labelled images alone, with as many steps per epoch as kd takes
    mixes = True

    @classmethod
    def from_config(cls, setup: Setup) -> Scratch:
        return cls(build_student(setup.cfg, setup.data, setup.runtime))

    def step(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        return StepOutput(logits, {"ce": cross_entropy(logits, batch.y, batch.labelled, batch.mixed)})
