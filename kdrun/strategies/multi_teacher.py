"""Distillation from several frozen teachers whose softened outputs are combined."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from kdrun.console import note
from kdrun.errors import ConfigError
from kdrun.losses import confidence_weights, mixture_logits
from kdrun.sources.models import MODEL_NAMES
from kdrun.keys import key
from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.methods.terms.compose import LogitTerms, build_logit_terms
from kdrun.sources.students import build_student
from kdrun.teachers.resolve import freeze, resolve_teacher, with_teacher
from kdrun.engine.trainer import evaluate_split

COMBINES = ("mean", "weighted", "confidence")


class TeacherEnsemble(nn.Module):
    """Frozen teachers combined by a plain average, fixed weights, or per-sample confidence
    (each teacher's top-class probability, normalised over teachers) of their softened outputs.

    Called as a model it gives the ensemble's own prediction (T=1), for its test accuracy.
    """

    def __init__(self, teachers: list[nn.Module], combine: str, weights: list[float] | None = None):
        super().__init__()
        self.teachers = nn.ModuleList(freeze(t) for t in teachers)
        self.combine = combine
        fixed = torch.tensor(weights if combine == "weighted" else [1.0] * len(teachers), dtype=torch.float32)
        self.register_buffer("weights", fixed / fixed.sum())

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)  # teachers stay in eval mode, whoever asks

    def logits(self, x: Tensor, T: float) -> Tensor:
        """Logits whose softmax at temperature T is the combined softened distribution."""
        with torch.no_grad():
            per_teacher = [teacher(x) for teacher in self.teachers]
            weights = confidence_weights(per_teacher) if self.combine == "confidence" else self.weights
            return mixture_logits(per_teacher, weights, T)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x, 1.0)


@register
class MultiTeacher(Strategy):
    name = "multi_teacher"
    uses_teacher_recipe = True

    @dataclass
    class Config:
        teachers: list[str] = key(choices=lambda: MODEL_NAMES)
        combine: str = key(choices=COMBINES)
        weights: list[float] | None = key(low=0)  # combine=weighted: one per teacher, normalised
        checkpoints: list[str | None] | None = key()  # one path (or null) per teacher, like teacher.checkpoint

    def __init__(self, student: nn.Module, ensemble: TeacherEnsemble, terms: LogitTerms,
                 teacher_summary: dict | None = None):
        super().__init__(student)
        self.ensemble = ensemble
        self.terms = terms
        self.teacher_summary = teacher_summary or {}

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        super().validate(cfg)
        teachers = list(cfg.strategy.teachers)
        if not teachers:
            raise ConfigError("strategy.teachers is empty; name at least one, e.g. strategy.teachers=[resnet56,resnet32x4]")
        if cfg.strategy.combine == "weighted":
            weights = cfg.strategy.weights
            if weights is None or len(weights) != len(teachers):
                raise ConfigError(f"strategy.weights={weights} gives {0 if weights is None else len(weights)} values "
                                  f"for {len(teachers)} teachers {teachers}; give one weight per teacher")
            if not sum(weights) > 0:
                raise ConfigError(f"strategy.weights={list(weights)} must not all be 0")
        if cfg.teacher.checkpoint:
            raise ConfigError("teacher.checkpoint names one teacher; with strategy=multi_teacher give "
                              "strategy.checkpoints=[path,...], one path (or null) per entry of strategy.teachers")
        paths = cfg.strategy.checkpoints
        if paths is not None and len(paths) != len(teachers):
            raise ConfigError(f"strategy.checkpoints has {len(paths)} entries for {len(teachers)} teachers "
                              f"{teachers}; give one path (or null) per teacher")

    @classmethod
    def from_config(cls, setup: Setup) -> MultiTeacher:
        cfg, data, augment, runtime = setup.cfg, setup.data, setup.augment, setup.runtime
        archs = list(cfg.strategy.teachers)
        checkpoints = list(cfg.strategy.checkpoints or [None] * len(archs))
        teachers = [resolve_teacher(with_teacher(cfg, arch, path), data, augment, runtime)
                    for arch, path in zip(archs, checkpoints)]
        weights = list(cfg.strategy.weights) if cfg.strategy.combine == "weighted" else None
        ensemble = runtime.prepare(TeacherEnsemble([t.model for t in teachers], cfg.strategy.combine, weights))
        ensemble_acc = evaluate_split(ensemble, data, augment, runtime, cfg.trainer.eval_batch_size)
        each = [{k.removeprefix("teacher_"): v for k, v in t.summary().items()} for t in teachers]
        note(f"[green]teachers[/] {cfg.strategy.combine} of "
             + ", ".join(f"{t['arch']} {t['test_acc']:.2f}%" for t in each)
             + f": ensemble test acc {ensemble_acc:.2f}%")
        summary = {
            # The student learns from the ensemble: it is "the teacher" in tables.
            "teacher_arch": "+".join(archs),
            "teacher_test_acc": ensemble_acc,
            "teacher_params": sum(t["params"] for t in each),
            "teacher_size_mb": round(sum(t["size_mb"] for t in each), 4),
            "teacher_source": ",".join(t["source"] for t in each),
            "teacher_path": ",".join(t["path"] for t in each),
            "ensemble_test_acc": ensemble_acc,
            "combine": cfg.strategy.combine,
            "teachers": each,
        }
        return cls(build_student(cfg, data, runtime), ensemble, build_logit_terms(cfg), summary)

    def step(self, batch: Batch) -> StepOutput:
        teacher_logits = self.ensemble.logits(batch.x, self.terms.temperature())
        logits = self.student(batch.x)
        return StepOutput(logits, self.terms(logits, teacher_logits, batch.y, batch.epoch, batch.index))

    def summary(self) -> dict:
        return dict(self.teacher_summary)
