"""What every way of training shares: one batch in, logits and named loss terms out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn


@dataclass
class Batch:
    x: torch.Tensor  # augmented, normalised inputs on the device
    y: torch.Tensor  # labels
    index: torch.Tensor  # positions of these samples in the training split
    epoch: int  # 1-based


@dataclass
class StepOutput:
    logits: torch.Tensor  # the student's, for train accuracy
    losses: dict[str, torch.Tensor]  # weighted terms; the trainer minimises their sum


class Strategy(ABC):
    """One way of training. The trainer knows nothing about distillation: it asks a
    strategy for the loss of a batch and which parameters to optimise."""

    name = "base"

    def __init__(self, student: nn.Module):
        self.student = student  # trained, evaluated and checkpointed

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.student.parameters()

    def train(self) -> None:
        self.student.train()

    @abstractmethod
    def step(self, batch: Batch) -> StepOutput:
        """The student's logits and the weighted loss terms for one batch."""

    def epoch_metrics(self, evaluate: Callable[[nn.Module], float]) -> dict:
        """Extra per-epoch numbers for metrics.jsonl; `evaluate(model)` gives a model's test accuracy."""
        return {}

    def summary(self) -> dict:
        """Extra facts for metrics.json (e.g. the teacher's accuracy)."""
        return {}

    def state_dict(self) -> dict:
        """Trainable state besides the student (e.g. a projection head), saved in last.pt for resuming.

        Tensors and plain values only (checkpoints load with weights_only=True). A strategy that
        owns modules returns their state dicts here and restores them in `load_state_dict`.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
