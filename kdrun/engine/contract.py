"""The contract between the trainer and a way of training: a `Strategy` turns a batch into the student's
logits and named loss terms (mdistiller's contract) and says what trains; the trainer minimises their sum.
`Setup` is what a strategy is built from; `Fit` what a strategy of several fits (born-again) calls per fit.
The registry that `strategy=` picks from is kdrun/strategies/base.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

from omegaconf import DictConfig
from torch import nn

from kdrun.sources.data import BatchAugment, DatasetSplits
from kdrun.runtime import Runtime
from kdrun.step import Batch, StepOutput

__all__ = ["Batch", "Fit", "Setup", "StepOutput", "Strategy"]


@dataclass
class Setup:
    """What a strategy is built from: the config, the data and where it computes."""

    cfg: DictConfig
    data: DatasetSplits  # what the student trains on (a transfer set: kdrun/sources/data/transfer.py)
    augment: BatchAugment
    runtime: Runtime
    teacher_data: DatasetSplits | None = None  # what a teacher trains on, when not `data`: every label

    @property
    def teacher_split(self) -> DatasetSplits:
        return self.data if self.teacher_data is None else self.teacher_data


Fit = Callable[["Strategy", Path, dict], dict]  # (strategy, run dir, extra facts) -> metrics.json summary


class Strategy(ABC):
    """One way of training. The trainer knows nothing about distillation: it asks a
    strategy for the loss of a batch and which parameters to optimise."""

    name: ClassVar[str] = "base"
    uses_teacher_recipe: ClassVar[bool] = False  # trains teachers with teacher.epochs / teacher.seed
    # The kinds of loss term (kdrun.methods.terms: logit, feature) this strategy can train.
    term_kinds: ClassVar[tuple[str, ...]] = ("logit",)
    distills: ClassVar[bool] = True  # learns through the terms the `loss` group lists
    # With a transfer set (dataset.labelled_fraction < 1, omit_classes, transfer_root): "unlabelled" trains
    # on every image with Batch.labelled set, "labelled" on the labelled images alone; None refuses it.
    transfer_set: ClassVar[str | None] = None
    mixes: ClassVar[bool] = False  # trains on mixup / cutmix batches (its label terms read Batch.mixed)

    @dataclass
    class Config:
        """The strategy's own keys (strategy.<key>), beside `name`."""

    def __init__(self, student: nn.Module):
        self.student = student  # trained, evaluated and checkpointed

    # ---- from a config -------------------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """Refuse combinations of keys this strategy cannot train (types and ranges, and whether the loss
        terms are of kinds it trains, are checked already)."""

    @classmethod
    @abstractmethod
    def from_config(cls, setup: Setup) -> Strategy:
        """The strategy, its student and whatever it learns from, ready to train."""

    @classmethod
    def run(cls, setup: Setup, run_dir: Path, fit: Fit) -> dict:
        """Train: one fit of the strategy into run_dir; returns the metrics.json summary."""
        return fit(cls.from_config(setup), run_dir, {})

    # ---- training --------------------------------------------------------------------------------

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.student.parameters()

    def task_losses(self) -> frozenset[str]:
        """The names of the step's losses that train on the labels alone (optim=dot keeps their gradient apart
        from the distillation terms')."""
        return frozenset()

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: all at optim.lr, unless a part trains at its own lr."""
        return [{"params": list(self.parameters())}]

    def train(self) -> None:
        self.student.train()

    @abstractmethod
    def step(self, batch: Batch) -> StepOutput:
        """The student's logits and the weighted loss terms for one batch."""

    def epoch_metrics(self, evaluate: Callable[[nn.Module], float]) -> dict:
        """Extra per-epoch numbers for metrics.jsonl; `evaluate(model)` gives a model's accuracy."""
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
