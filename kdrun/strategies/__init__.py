"""Ways of training, picked by `strategy=`."""

from __future__ import annotations

from kdrun.data import BatchAugment, DatasetSplits
from kdrun.models import build_model
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.base import StepOutput, Strategy
from kdrun.strategies.kd import KD
from kdrun.strategies.scratch import Scratch

__all__ = ["KD", "Scratch", "StepOutput", "Strategy", "build_strategy"]


def build_student(cfg, data: DatasetSplits, runtime: Runtime):
    """The student, initialised from `seed` (after any teacher training reseeded the RNGs)."""
    seed_everything(cfg.seed)
    model = build_model(cfg.student.arch, data.in_channels, data.image_size, data.num_classes)
    return runtime.prepare(model)


def build_strategy(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime) -> Strategy:
    if cfg.strategy.name == "scratch":
        return Scratch(build_student(cfg, data, runtime))
    if cfg.strategy.name == "kd":
        from kdrun.teachers import resolve_teacher  # teachers train with the trainer, which imports strategies

        teacher = resolve_teacher(cfg, data, augment, runtime)
        return KD(build_student(cfg, data, runtime), teacher.model, alpha=cfg.loss.alpha, beta=cfg.loss.beta,
                  T=cfg.loss.T, teacher_summary=teacher.summary())
    raise ValueError(f"unknown strategy {cfg.strategy.name!r}")
