"""From a composed config to a Strategy: students, teachers and the pieces each strategy owns."""

from __future__ import annotations

import copy

from omegaconf import DictConfig

from kdrun.console import console
from kdrun.data import BatchAugment, DatasetSplits
from kdrun.deploy.prune import prune_student
from kdrun.models import build_model
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.base import Strategy
from kdrun.strategies.features import FeatureDistiller, FeatureTerms, plan_feature_terms, stage_shapes
from kdrun.strategies.kd import KD
from kdrun.strategies.multi_teacher import MultiTeacher, TeacherEnsemble
from kdrun.strategies.objectives import build_objective
from kdrun.strategies.online import Online
from kdrun.strategies.scratch import Scratch
from kdrun.strategies.self_distillation import SelfDistillation


def build_student(cfg, data: DatasetSplits, runtime: Runtime, seed: int | None = None):
    """The student, initialised from `seed` (default cfg.seed), after any teacher training reseeded the RNGs."""
    seed_everything(cfg.seed if seed is None else seed)
    model = build_model(cfg.student.arch, data.in_channels, data.image_size, data.num_classes)
    model = prune_student(model, cfg.student.get("prune"))
    return runtime.prepare(model)


def with_teacher(cfg: DictConfig, arch: str, checkpoint: str | None = None) -> DictConfig:
    """A copy of `cfg` whose teacher is `arch` (from `checkpoint`, else the cache or trained),
    so resolve_teacher serves every teacher of a run the same way."""
    cfg = copy.deepcopy(cfg)
    cfg.teacher.arch = arch
    cfg.teacher.checkpoint = checkpoint
    return cfg


def distill_from(cfg, data: DatasetSplits, runtime: Runtime, teacher, features: FeatureTerms | None,
                 seed: int | None = None) -> KD:
    """A fresh student that learns from `teacher` (a kdrun.teachers.Teacher) with the `loss` group."""
    from kdrun.teacher_outputs import build_teacher_outputs  # it imports kdrun.teachers: import it here

    student = build_student(cfg, data, runtime, seed)
    distiller = runtime.prepare(FeatureDistiller(features)) if features is not None else None
    # Logit terms need only the teacher's logits, which can be cached; feature terms need its stages, live.
    outputs = build_teacher_outputs(cfg, data, runtime, teacher.model) if features is None else None
    return KD(student, teacher.model, objective=build_objective(cfg.loss), features=distiller,
              teacher_summary=teacher.summary(), teacher_outputs=outputs)


def build_strategy(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime) -> Strategy:
    # teachers train with the trainer, which imports strategies: import it here
    from kdrun.teachers import resolve_teacher

    name = cfg.strategy.name
    if name == "scratch":
        return Scratch(build_student(cfg, data, runtime))
    if name == "kd":
        features = plan_feature_terms(cfg.loss, cfg.student.arch, cfg.teacher.arch, data)  # before any teacher trains
        return distill_from(cfg, data, runtime, resolve_teacher(cfg, data, augment, runtime), features)
    if name == "multi_teacher":
        return build_multi_teacher(cfg, data, augment, runtime)
    if name == "online":
        seed_everything(cfg.seed)  # peers differ: each draws its initial weights in turn
        peers = [runtime.prepare(build_model(arch, data.in_channels, data.image_size, data.num_classes))
                 for arch in (cfg.student.arch, *cfg.strategy.peers)]
        return Online(peers, build_objective(cfg.loss))
    if name == "self":
        shapes = stage_shapes(cfg.student.arch, data.in_channels, data.image_size, data.num_classes)
        strategy = SelfDistillation(build_student(cfg, data, runtime), shapes, build_objective(cfg.loss),
                                    ce_weight=cfg.strategy.ce_weight, hint_weight=cfg.loss.hint_weight)
        runtime.prepare(strategy.heads)
        return strategy
    if name == "born_again":
        raise ValueError("strategy=born_again runs several fits: use kdrun.strategies.born_again.fit_generations")
    raise ValueError(f"unknown strategy {name!r}")


def build_multi_teacher(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime) -> MultiTeacher:
    from kdrun.teachers import resolve_teacher
    from kdrun.trainer import evaluate

    archs = list(cfg.strategy.teachers)
    checkpoints = list(cfg.strategy.checkpoints or [None] * len(archs))
    teachers = [resolve_teacher(with_teacher(cfg, arch, path), data, augment, runtime)
                for arch, path in zip(archs, checkpoints)]
    weights = list(cfg.strategy.weights) if cfg.strategy.combine == "weighted" else None
    ensemble = runtime.prepare(TeacherEnsemble([t.model for t in teachers], cfg.strategy.combine, weights))
    ensemble_acc = evaluate(ensemble, data.test_x, data.test_y, augment, runtime, cfg.trainer.eval_batch_size)
    each = [{k.removeprefix("teacher_"): v for k, v in t.summary().items()} for t in teachers]
    console.print(f"[green]teachers[/] {cfg.strategy.combine} of "
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
    return MultiTeacher(build_student(cfg, data, runtime), ensemble, build_objective(cfg.loss), summary)
