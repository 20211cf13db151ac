"""Where a student comes from: its architecture from the `student` group, its initial weights from a seed."""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.sources.data import DatasetSplits
from kdrun.compress.prune import prune_student
from kdrun.compress.qat import enable_qat
from kdrun.sources.model_sources import build_configured
from kdrun.runtime import Runtime, seed_everything


def build_student(cfg: DictConfig, data: DatasetSplits, runtime: Runtime, seed: int | None = None):
    """The configured student for `data`, initialised from `seed` (default cfg.seed) after any teacher
    training reseeded the RNGs; pruned and made quantization-aware as student.prune / student.qat say."""
    seed_everything(cfg.seed if seed is None else seed)
    student = prune_student(build_configured(cfg.student, data, "student"), cfg.student.get("prune"))
    if cfg.student.get("qat"):
        enable_qat(student)  # after pruning: the layers that int8 will round are the pruned ones
    return runtime.prepare(student)
