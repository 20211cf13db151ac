"""Knowledge distillation from one frozen teacher: the `loss` group's logit terms (kd, dkd, ...) and
feature terms (hint, at, ...), summed."""

from __future__ import annotations

from itertools import chain
from typing import Iterator

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import FeatureTerms, LogitTerms, build_feature_terms, build_logit_terms
from kdrun.methods.terms.feature.stages import FeatureContext
from kdrun.sources.model_sources import arch_of
from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.sources.students import build_student
from kdrun.teachers.outputs import TeacherOutputs, build_teacher_outputs
from kdrun.teachers.resolve import Teacher, freeze, resolve_teacher


def feature_context(cfg: DictConfig, data, teacher_arch: str | None = None) -> FeatureContext:
    train_y = getattr(data, "train_y", None)  # every batch carries its samples' positions in it
    return FeatureContext(arch_of(cfg.student), teacher_arch or arch_of(cfg.teacher),
                          (data.in_channels, data.image_size, data.num_classes),
                          None if train_y is None else len(train_y))


@register
class KD(Strategy):
    name = "kd"
    uses_teacher_recipe = True
    term_kinds = ("logit", "feature")
    transfer_set = "unlabelled"  # distils on every image; the teacher was trained on every label
    mixes = True  # the teacher is asked about the student's mixed view

    def __init__(self, student: nn.Module, teacher: nn.Module, terms: LogitTerms, *,
                 features: FeatureTerms | None = None, teacher_summary: dict | None = None,
                 teacher_outputs: TeacherOutputs | None = None):
        """`teacher_outputs` serves the teacher's logits (cached or lean live, kdrun.teachers.outputs)."""
        super().__init__(student)
        self.teacher = freeze(teacher)
        self.teacher_outputs = teacher_outputs
        self.terms = terms
        self.features = features  # owns the feature terms' trainable parts: trained, never saved with the student
        self.teacher_summary = teacher_summary or {}

    @classmethod
    def from_config(cls, setup: Setup) -> KD:
        context = feature_context(setup.cfg, setup.data)
        build_feature_terms(setup.cfg, context)  # checks every stage choice before a teacher trains
        teacher = resolve_teacher(setup.cfg, setup.teacher_split, setup.augment, setup.runtime)
        return cls.from_teacher(setup, teacher, context)

    @staticmethod
    def from_teacher(setup: Setup, teacher: Teacher, context: FeatureContext, seed: int | None = None) -> KD:
        """A fresh student (initialised from `seed`, default cfg.seed) that learns from `teacher` with the
        `loss` group."""
        cfg, data, runtime = setup.cfg, setup.data, setup.runtime
        student = build_student(cfg, data, runtime, seed)
        features = build_feature_terms(cfg, context)  # after the student: its RNG draws follow the student's
        if features is not None:
            features = runtime.prepare(features).tap(student, teacher.model)
        terms = build_logit_terms(cfg).to(runtime.device)  # a term's own parameters live beside the student's
        # Logit terms need only the teacher's logits, which can be cached; feature terms need its stages, live.
        outputs = build_teacher_outputs(cfg, data, runtime, teacher.model, terms.temperature()) \
            if features is None else None
        return KD(student, teacher.model, terms, features=features, teacher_summary=teacher.summary(),
                  teacher_outputs=outputs)

    def parts(self) -> dict[str, nn.Module]:
        """What trains besides the student: the terms' own parameters (never saved with the student)."""
        return {"terms": self.terms, **({"features": self.features} if self.features is not None else {})}

    def parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.student.parameters(), *(part.parameters() for part in self.parts().values()))

    def task_losses(self) -> frozenset[str]:
        return frozenset(term.name for term in self.terms.terms if not term.distils)

    def param_groups(self) -> list[dict]:
        """One group at optim.lr, then one per feature-term part that trains at its own lr (FT's paraphraser)."""
        own = [] if self.features is None else [group for term in self.features.terms for group in term.lr_groups()]
        taken = {id(p) for params, _ in own for p in params}
        rest = [p for p in self.parameters() if id(p) not in taken]
        return [{"params": rest}, *({"params": list(params), "lr": lr} for params, lr in own)]

    def train(self) -> None:
        self.student.train()
        for part in self.parts().values():
            part.train()

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
            return StepOutput(logits, self.terms(logits, teacher_logits, batch.y, batch.epoch, batch.index,
                                                 batch.labelled, batch.mixed))
        # Feature terms need the teacher's stage outputs, which logits alone (or a logit cache) cannot give.
        with torch.no_grad():
            teacher_stages, teacher_logits = self.teacher.forward_features(batch.x)
        stages, logits = self.student.forward_features(batch.x)
        # A term's initialisation stage trains its init loss alone: no logit term, no other feature term.
        losses = {} if self.features.initialising(batch.epoch) else \
            self.terms(logits, teacher_logits, batch.y, batch.epoch, batch.index, batch.labelled, batch.mixed)
        losses.update(self.features(TermInputs(logits, teacher_logits, batch.y, batch.epoch, batch.index,
                                               self.features.outputs(stages, 0),
                                               self.features.outputs(teacher_stages, 1),
                                               labelled=batch.labelled, mixed=batch.mixed)))
        return StepOutput(logits, losses)

    def summary(self) -> dict:
        summary = dict(self.teacher_summary)
        if self.teacher_outputs is not None:
            summary.update(self.teacher_outputs.summary())
        return summary

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts().items() if part.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts().items():
            if name in state:
                part.load_state_dict(state[name])
