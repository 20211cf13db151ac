"""Be Your Own Teacher (Zhang et al. 2019): deep-to-shallow self-distillation.

An auxiliary classifier sits on every stage of the student but the last. The
network's own classifier (the deepest head) learns from the labels; each
shallower head learns from the labels and from the deepest head's softened,
detached outputs (the `loss` group's logit terms), and optionally (strategy.hint_weight) from
the deepest stage's features through its own adaptation layer. The heads are
trained with the student and dropped at the end: the saved model is the plain
network.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.losses import cross_entropy
from kdrun.keys import key
from kdrun.sources.model_sources import arch_of
from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.methods.terms.feature.hint import hint_loss
from kdrun.methods.terms.feature.stages import Shape, describe, stage_shapes
from kdrun.methods.terms.compose import LogitTerms, build_logit_terms
from kdrun.sources.students import build_student


class AuxiliaryHead(nn.Module):
    """Adapt a stage's output to the deepest stage's width (a 3x3 conv + BN on feature maps,
    a linear layer on vectors), then ReLU, global average pooling and a linear classifier.
    The adapted features are what the optional hint compares with the deepest stage."""

    def __init__(self, in_shape: Shape, deep_shape: Shape, num_classes: int):
        super().__init__()
        width = deep_shape[0]
        if len(in_shape) == 3:
            self.adapt = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        else:
            self.adapt = nn.Linear(in_shape[0], width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        adapted = self.adapt(features)
        pooled = F.relu(adapted)
        if pooled.dim() == 4:
            pooled = F.adaptive_avg_pool2d(pooled, 1).flatten(1)
        return adapted, self.fc(pooled)


class HeadClassifier(nn.Module):
    """The student up to one stage, then that stage's auxiliary head: a model to evaluate."""

    def __init__(self, student: nn.Module, head: AuxiliaryHead, stage: int):
        super().__init__()
        self.student, self.head, self.stage = student, head, stage

    def forward(self, x: Tensor) -> Tensor:
        features, _ = self.student.forward_features(x)
        return self.head(features[self.stage])[1]


@register
class SelfDistillation(Strategy):
    name = "self"

    @dataclass
    class Config:
        ce_weight: float = key(low=0)  # the deepest head's cross-entropy
        hint_weight: float = key(low=0)  # deep-to-shallow feature hints through each head's adaptation layer

    def __init__(self, student: nn.Module, stage_shapes: tuple[Shape, ...], terms: LogitTerms, *,
                 ce_weight: float, hint_weight: float):
        super().__init__(student)
        if len(stage_shapes) < 2:
            raise ConfigError(f"strategy=self needs a student with at least 2 stages; {student.arch} has "
                              f"{len(stage_shapes)}")
        deep = stage_shapes[-1]
        if hint_weight:
            for stage, shape in enumerate(stage_shapes[:-1]):
                if len(shape) != len(deep):
                    raise ConfigError(
                        f"strategy=self with strategy.hint_weight: {student.arch} stage {stage} ({describe(shape)}) "
                        f"cannot be matched to its deepest stage ({describe(deep)}); set strategy.hint_weight=0")
        self.heads = nn.ModuleList(AuxiliaryHead(shape, deep, student.num_classes) for shape in stage_shapes[:-1])
        self.terms = terms
        self.ce_weight, self.hint_weight = ce_weight, hint_weight
        self.head_acc: list[float] = []

    @classmethod
    def from_config(cls, setup: Setup) -> SelfDistillation:
        cfg, data, runtime = setup.cfg, setup.data, setup.runtime
        shapes = stage_shapes(arch_of(cfg.student), data.in_channels, data.image_size, data.num_classes)
        strategy = cls(build_student(cfg, data, runtime), shapes, build_logit_terms(cfg),
                       ce_weight=cfg.strategy.ce_weight, hint_weight=cfg.strategy.hint_weight)
        runtime.prepare(strategy.heads)
        return strategy

    def parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.student.parameters(), self.heads.parameters())

    def train(self) -> None:
        self.student.train()
        self.heads.train()

    def step(self, batch: Batch) -> StepOutput:
        features, logits = self.student.forward_features(batch.x)
        losses = {"ce": self.ce_weight * cross_entropy(logits, batch.y)}
        deep_logits, deep_features = logits.detach(), features[-1].detach()
        for stage, head in enumerate(self.heads):
            adapted, head_logits = head(features[stage])
            for term, value in self.terms(head_logits, deep_logits, batch.y, batch.epoch, batch.index).items():
                losses[f"head{stage}_{term}"] = value
            if self.hint_weight:
                losses[f"head{stage}_hint"] = self.hint_weight * hint_loss(adapted, deep_features)
        return StepOutput(logits, losses)

    def epoch_metrics(self, evaluate: Callable[[nn.Module], float]) -> dict:
        self.head_acc = []
        for stage, head in enumerate(self.heads):
            model = HeadClassifier(self.student, head, stage).train(self.student.training)
            self.head_acc.append(evaluate(model))
        return {f"head{stage}_test_acc": acc for stage, acc in enumerate(self.head_acc)}

    def summary(self) -> dict:
        return {"head_test_acc": {f"head{stage}": acc for stage, acc in enumerate(self.head_acc)}}

    def state_dict(self) -> dict:
        return {"heads": self.heads.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])
