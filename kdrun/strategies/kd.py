"""Knowledge distillation from one frozen teacher: vanilla KD (Hinton et al. 2015) or DKD
on the logits, plus optional FitNets hints and attention transfer on the features."""

from __future__ import annotations

from itertools import chain
from typing import Iterator

import torch
from torch import Tensor, nn

from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.strategies.features import FeatureDistiller, FeatureTerms, plan_feature_terms
from kdrun.strategies.objectives import KDObjective, Objective, build_objective
from kdrun.model_sources import arch_of
from kdrun.students import build_student
from kdrun.teacher_outputs import TeacherOutputs, build_teacher_outputs
from kdrun.teachers import Teacher, freeze, resolve_teacher


def mix_of(batch: Batch) -> dict:
    """The objective's `mixed` argument, given only for a mixed batch (loss=dkd refuses mixing: validate)."""
    return {} if batch.mixed is None else {"mixed": batch.mixed}


@register
class KD(Strategy):
    name = "kd"
    uses_teacher_recipe = True
    feature_terms = ("hint_weight", "at_weight")
    transfer_set = "unlabelled"  # distils on every image; the teacher was trained on every label
    mixes = True  # the teacher is asked about the student's mixed view

    def __init__(self, student: nn.Module, teacher: nn.Module, *, objective: Objective | None = None,
                 alpha: float | None = None, beta: float | None = None, T: float | None = None,
                 features: FeatureDistiller | None = None, teacher_summary: dict | None = None,
                 teacher_outputs: TeacherOutputs | None = None):
        """`objective` gives the logit terms (kd or dkd); alpha, beta, T are shorthand for vanilla KD.
        `teacher_outputs` serves the teacher's logits (cached or lean live, kdrun.teacher_outputs)."""
        super().__init__(student)
        self.teacher = freeze(teacher)
        self.teacher_outputs = teacher_outputs
        self.objective = objective if objective is not None else KDObjective(alpha, beta, T)
        self.features = features  # owns the hint regressor: trained, never saved with the student
        self.teacher_summary = teacher_summary or {}

    @classmethod
    def from_config(cls, setup: Setup) -> KD:
        cfg = setup.cfg
        features = plan_feature_terms(cfg.loss, arch_of(cfg.student), arch_of(cfg.teacher), setup.data)  # before training a teacher
        return cls.from_teacher(setup, resolve_teacher(cfg, setup.teacher_split, setup.augment, setup.runtime), features)

    @staticmethod
    def from_teacher(setup: Setup, teacher: Teacher, features: FeatureTerms | None, seed: int | None = None) -> KD:
        """A fresh student (initialised from `seed`, default cfg.seed) that learns from `teacher` with the
        `loss` group."""
        cfg, data, runtime = setup.cfg, setup.data, setup.runtime
        student = build_student(cfg, data, runtime, seed)
        distiller = runtime.prepare(FeatureDistiller(features)).tap(student, teacher.model) if features is not None else None
        # Logit terms need only the teacher's logits, which can be cached; feature terms need its stages, live.
        outputs = build_teacher_outputs(cfg, data, runtime, teacher.model) if features is None else None
        return KD(student, teacher.model, objective=build_objective(cfg.loss), features=distiller,
                  teacher_summary=teacher.summary(), teacher_outputs=outputs)

    def parameters(self) -> Iterator[nn.Parameter]:
        if self.features is None:
            return self.student.parameters()
        return chain(self.student.parameters(), self.features.parameters())

    def train(self) -> None:
        self.student.train()
        if self.features is not None:
            self.features.train()

    def teacher_logits(self, batch: Batch) -> Tensor:
        """The frozen teacher's logits for a batch."""
        if self.teacher_outputs is not None:
            return self.teacher_outputs(batch)
        with torch.no_grad():
            return self.teacher(batch.x)

    def step(self, batch: Batch) -> StepOutput:
        if self.features is None:
            teacher_logits = self.teacher_logits(batch)
            logits = self.student(batch.x)
            return StepOutput(logits, self.objective(logits, teacher_logits, batch.y, batch.epoch, batch.labelled,
                                                     **mix_of(batch)))
        # Feature terms need the teacher's stage outputs, which logits alone (or a logit cache) cannot give.
        with torch.no_grad():
            teacher_features, teacher_logits = self.teacher.forward_features(batch.x)
        features, logits = self.student.forward_features(batch.x)
        losses = self.objective(logits, teacher_logits, batch.y, batch.epoch, batch.labelled, **mix_of(batch))
        losses.update(self.features(features, teacher_features))
        return StepOutput(logits, losses)

    def summary(self) -> dict:
        summary = dict(self.teacher_summary)
        if self.teacher_outputs is not None:
            summary.update(self.teacher_outputs.summary())
        return summary

    def state_dict(self) -> dict:
        return {} if self.features is None else {"features": self.features.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.features is not None:
            self.features.load_state_dict(state["features"])
