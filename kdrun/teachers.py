"""Where a teacher comes from: a checkpoint, the cache, or training it first.

Cached teachers live in <paths.teachers>/<dataset>/<arch>/<fingerprint>/, where
the fingerprint hashes everything that shapes the trained weights (dataset,
architecture, recipe). Any run that needs the same teacher reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from kdrun.checkpoint import check_fits, load_checkpoint
from kdrun.console import console
from kdrun.data import BatchAugment, DatasetSplits
from kdrun.errors import CheckpointError
from kdrun.models import build_model, count_parameters, model_size_mb
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.scratch import Scratch
from kdrun.trainer import Trainer, TrainerConfig, evaluate

# Dataset keys that say where files live, not what the data is.
_LOCATION_KEYS = ("root", "download")


@dataclass
class Teacher:
    model: nn.Module
    test_acc: float
    source: str  # "checkpoint", "cache" or "trained"
    path: Path

    def summary(self) -> dict:
        return {
            "teacher_arch": self.model.arch,
            "teacher_test_acc": self.test_acc,
            "teacher_params": count_parameters(self.model),
            "teacher_size_mb": round(model_size_mb(self.model), 4),
            "teacher_source": self.source,
            "teacher_path": str(self.path),
        }


def teacher_recipe(cfg) -> dict:
    """Everything that decides a trained teacher's weights."""
    dataset = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in _LOCATION_KEYS}
    return {
        "dataset": dataset,
        "arch": cfg.teacher.arch,
        "epochs": cfg.teacher.epochs,
        "seed": cfg.teacher.seed,
        "batch_size": cfg.trainer.batch_size,
        "optim": OmegaConf.to_container(cfg.optim, resolve=True),
    }


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def teacher_cache_dir(cfg) -> Path:
    recipe = teacher_recipe(cfg)
    return Path(cfg.paths.teachers) / cfg.dataset.name / cfg.teacher.arch / fingerprint(recipe)


def load_model(path: Path, data: DatasetSplits, runtime: Runtime, *, role: str, expect_arch: str | None = None):
    """Build the checkpoint's architecture and load its weights; returns (model, payload)."""
    payload = load_checkpoint(path)
    meta = payload["model"]
    check_fits(meta, role=role, dataset=data.name, num_classes=data.num_classes, in_channels=data.in_channels,
               path=path)
    if expect_arch is not None and meta["arch"] != expect_arch:
        raise CheckpointError(
            f"{role} checkpoint {str(path)!r} holds a {meta['arch']}, but {role}={expect_arch}; "
            f"add {role}={meta['arch']} to the command"
        )
    model = build_model(meta["arch"], data.in_channels, data.image_size, data.num_classes)
    model.load_state_dict(payload["state_dict"])
    return runtime.prepare(model), payload


def resolve_teacher(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime) -> Teacher:
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        model, _ = load_model(path, data, runtime, role="teacher", expect_arch=cfg.teacher.arch)
        acc = evaluate(model, data.test_x, data.test_y, augment, runtime, cfg.trainer.eval_batch_size)
        return Teacher(model, acc, "checkpoint", path)

    cache_dir = teacher_cache_dir(cfg)
    weights = cache_dir / "teacher.pt"
    if weights.is_file():
        model, payload = load_model(weights, data, runtime, role="teacher")
        console.print(f"[green]teacher[/] {cfg.teacher.arch} from cache {cache_dir}")
        return Teacher(model, float(payload["test_acc"]), "cache", weights)

    console.print(f"[yellow]no cached {cfg.teacher.arch} teacher for {cfg.dataset.name}[/] "
                  f"(looked in {cache_dir}); training it first")
    train_teacher(cfg, data, augment, runtime, cache_dir)
    model, payload = load_model(weights, data, runtime, role="teacher")
    return Teacher(model, float(payload["test_acc"]), "trained", weights)


def train_teacher(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime, cache_dir: Path) -> None:
    """Train a teacher from scratch into a private directory, then move it into the cache in one rename."""
    work_dir = cache_dir.with_name(f"{cache_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(work_dir, ignore_errors=True)
    seed_everything(cfg.teacher.seed)
    model = runtime.prepare(build_model(cfg.teacher.arch, data.in_channels, data.image_size, data.num_classes))
    trainer = Trainer(
        TrainerConfig(epochs=cfg.teacher.epochs, batch_size=cfg.trainer.batch_size,
                      eval_batch_size=cfg.trainer.eval_batch_size, data_seed=cfg.teacher.seed,
                      progress=cfg.trainer.progress, label="teacher"),
        cfg.optim, runtime,
    )
    summary = trainer.fit(Scratch(model), data, augment, work_dir)
    (work_dir / "recipe.json").write_text(json.dumps(teacher_recipe(cfg), indent=2))
    # The final weights are the teacher, as in the published recipes (not the test-selected best).
    os.replace(work_dir / "checkpoints" / "last.pt", work_dir / "teacher.pt")
    try:
        os.rename(work_dir, cache_dir)
    except OSError:  # another run cached the same teacher meanwhile: keep theirs
        shutil.rmtree(work_dir, ignore_errors=True)
    console.print(f"[green]teacher[/] {cfg.teacher.arch} cached in {cache_dir} "
                  f"(test acc {summary['final_test_acc']:.2f}%)")
