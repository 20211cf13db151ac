"""Where a student comes from: its architecture from the `student` group, its initial weights from a seed."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.data import DatasetSplits
from kdrun.models import build_model, model_options
from kdrun.runtime import Runtime, seed_everything


def build_student(cfg: DictConfig, data: DatasetSplits, runtime: Runtime, seed: int | None = None,
                  arch: str | None = None):
    """A fresh `arch` (default student.arch) for `data`, initialised from `seed` (default cfg.seed) after any
    teacher training reseeded the RNGs."""
    seed_everything(cfg.seed if seed is None else seed)
    model = build_model(arch or cfg.student.arch, data.in_channels, data.image_size, data.num_classes,
                        None if arch else model_options(cfg.student, "student"))
    return runtime.prepare(model)
