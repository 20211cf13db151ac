"""What every way of training shares, and the registry that `strategy=` picks from.

A strategy is one class in one file: it declares its own config keys (`Config`, a dataclass of
kdrun.schema keys), checks how they combine with the rest of the config (`validate`), builds
itself from the config (`from_config`) and registers under its `strategy=` name with `@register`.
Its `step` turns a batch into the student's logits and named loss terms (mdistiller's contract);
the trainer minimises their sum. A method that needs several fits (born-again) overrides `run`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

from omegaconf import DictConfig
from torch import nn

from kdrun.data import BatchAugment, DatasetSplits
from kdrun.data.mix import Mix
from kdrun.data.transfer import uses_transfer_set
from kdrun.errors import ConfigError
from kdrun.runtime import Runtime
from kdrun.step import Batch, StepOutput
from kdrun.strategies.objectives import OBJECTIVES

__all__ = ["Batch", "Fit", "STRATEGIES", "Setup", "StepOutput", "Strategy", "register", "strategy_class"]


@dataclass
class Setup:
    """What a strategy is built from: the config, the data and where it computes."""

    cfg: DictConfig
    data: DatasetSplits  # what the student trains on (a transfer set: kdrun/data/transfer.py)
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
    # Feature terms (loss.hint_weight, loss.at_weight) this strategy can train; others must be 0.
    feature_terms: ClassVar[tuple[str, ...]] = ()
    distills: ClassVar[bool] = True  # learns through the objective the `loss` group names
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
        """Refuse combinations of keys this strategy cannot train (types and ranges are checked already)."""
        if cls.distills and cfg.loss.name not in OBJECTIVES:
            raise ConfigError(f"strategy={cls.name} with loss={cfg.loss.name} has no distillation term; use "
                              f"strategy=scratch to train on the labels, or loss={' or loss='.join(OBJECTIVES)}")
        if cls.transfer_set is None and uses_transfer_set(cfg.dataset):
            users = [name for name, c in STRATEGIES.items() if c.transfer_set is not None]
            raise ConfigError(f"strategy={cls.name} does not train on a transfer set (dataset.labelled_fraction="
                              f"{cfg.dataset.get('labelled_fraction')}, omit_classes={cfg.dataset.get('omit_classes')}, "
                              f"transfer_root={cfg.dataset.get('transfer_root')}); use strategy={' or '.join(users)}, "
                              "or the defaults 1.0, [] and null")
        mix = Mix.from_config(cfg.dataset)
        if mix.active and not cls.mixes:
            users = [name for name, c in STRATEGIES.items() if c.mixes]
            raise ConfigError(f"strategy={cls.name} does not train on mixed images (dataset.augment.mixup={mix.mixup}, "
                              f"cutmix={mix.cutmix}); use strategy={' or '.join(users)}, or set both to 0")
        if mix.active and cls.distills and cfg.loss.name == "dkd":
            raise ConfigError(f"loss=dkd splits the classes at one true label, and a mixed image (dataset.augment."
                              f"mixup={mix.mixup}, cutmix={mix.cutmix}) has two; use loss=kd, or set both to 0")
        for term in ("hint_weight", "at_weight"):
            if cfg.loss.get(term) and term not in cls.feature_terms:
                users = [name for name, c in STRATEGIES.items() if term in c.feature_terms]
                raise ConfigError(f"loss.{term}={cfg.loss[term]} does not apply to strategy={cls.name}; it works "
                                  f"with strategy={' or '.join(users)}. Set loss.{term}=0")

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


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make `cls` the strategy that `strategy=<cls.name>` picks."""
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"two strategies are named {cls.name!r}: {STRATEGIES[cls.name].__qualname__} and "
                         f"{cls.__qualname__}")
    STRATEGIES[cls.name] = cls
    return cls


def strategy_class(name: str) -> type[Strategy]:
    if not isinstance(name, str):
        raise ConfigError(f"strategy.name must be a string, got {name!r}")
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]
