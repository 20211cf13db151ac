"""Checks on a composed config, with messages that name the bad value and what is allowed.

Hydra already refuses unknown keys (configs are in struct mode) and unknown
group options (listing the available ones); this covers the values.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from kdrun.data import DATASET_NAMES
from kdrun.errors import ConfigError
from kdrun.models import MODEL_NAMES
from kdrun.optim import OPTIMIZERS, SCHEDULES
from kdrun.strategies.multi_teacher import COMBINES

STRATEGIES = ("scratch", "kd", "multi_teacher", "online", "born_again", "self")
LOSSES = ("kd", "dkd", "ce")
# Strategies that train teachers with the teacher recipe (teacher.epochs, teacher.seed).
TEACHER_STRATEGIES = ("kd", "multi_teacher", "born_again")
# Which strategies each feature term works with: hint and attention compare a student with
# one teacher's stages; self uses hint_weight for its deep-to-shallow feature hints.
FEATURE_TERMS = {"hint_weight": ("kd", "born_again", "self"), "at_weight": ("kd", "born_again")}


def check_number(value, key: str, *, low: float | None = None, strict: bool = False, integer: bool = False):
    """Return `value` if it is a number (an int if `integer`) above `low`; else raise ConfigError."""
    kind = "an integer" if integer else "a number"
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ConfigError(f"{key} must be {bound}, got {value!r}")
    return value


def check_choice(value, key: str, allowed) -> str:
    if value not in allowed:
        raise ConfigError(f"unknown {key} {value!r}; allowed: {', '.join(allowed)}")
    return value


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first value that cannot run."""
    check_choice(cfg.dataset.name, "dataset", DATASET_NAMES)
    check_choice(cfg.student.arch, "student", MODEL_NAMES)
    check_choice(cfg.strategy.name, "strategy", STRATEGIES)
    check_number(cfg.seed, "seed", low=0, integer=True)
    check_number(cfg.data_seed, "data_seed", low=0, integer=True)
    check_number(cfg.trainer.epochs, "epochs", low=1, integer=True)
    check_number(cfg.trainer.batch_size, "batch_size", low=1, integer=True)
    check_number(cfg.trainer.eval_batch_size, "trainer.eval_batch_size", low=1, integer=True)
    for key in ("crop_padding",):
        check_number(cfg.dataset.augment[key], f"dataset.augment.{key}", low=0, integer=True)

    check_choice(cfg.optim.name, "optim", OPTIMIZERS)
    check_choice(cfg.optim.schedule, "optim.schedule", SCHEDULES)
    check_number(cfg.optim.lr, "optim.lr", low=0, strict=True)
    check_number(cfg.optim.weight_decay, "optim.weight_decay", low=0)
    check_number(cfg.optim.warmup_epochs, "optim.warmup_epochs", low=0)

    if cfg.strategy.name != "scratch":
        validate_distillation(cfg)


def check_list(value, key: str, example: str, *, allow_empty: bool = False) -> list:
    if not isinstance(value, (list, ListConfig)) or (not allow_empty and not len(value)):
        raise ConfigError(f"{key} must be a list, e.g. {key}={example}; got {value!r}")
    return list(value)


def validate_distillation(cfg: DictConfig) -> None:
    """The loss group and the strategy's own keys, for every strategy but scratch."""
    name = cfg.strategy.name
    if name == "kd":
        check_choice(cfg.teacher.arch, "teacher", MODEL_NAMES)
    if name in TEACHER_STRATEGIES:
        check_number(cfg.teacher.epochs, "teacher.epochs", low=1, integer=True)
        check_number(cfg.teacher.seed, "teacher.seed", low=0, integer=True)

    loss = cfg.loss
    check_choice(loss.name, "loss", LOSSES)
    if loss.name == "ce":
        raise ConfigError(f"strategy={name} with loss=ce has no distillation term; "
                          "use strategy=scratch to train on labels, or loss=kd")
    check_number(loss.T, "T (loss.T)", low=0, strict=True)
    check_number(loss.alpha, "loss.alpha", low=0)
    check_number(loss.beta, "loss.beta", low=0)
    if loss.name == "dkd":
        check_number(loss.tckd_weight, "loss.tckd_weight", low=0)
        check_number(loss.nckd_weight, "loss.nckd_weight", low=0)
        check_number(loss.warmup_epochs, "loss.warmup_epochs", low=0, integer=True)
    # Stage indices are checked against the architectures when the strategy is built.
    for key, strategies in FEATURE_TERMS.items():
        if check_number(loss[key], f"loss.{key}", low=0) and name not in strategies:
            raise ConfigError(f"loss.{key}={loss[key]} does not apply to strategy={name}; it works with "
                              f"strategy={' or '.join(strategies)}. Set loss.{key}=0")

    if name == "multi_teacher":
        teachers = check_list(cfg.strategy.teachers, "strategy.teachers", "[resnet56,resnet32x4]")
        for arch in teachers:
            check_choice(arch, "teacher in strategy.teachers", MODEL_NAMES)
        combine = check_choice(cfg.strategy.combine, "strategy.combine", COMBINES)
        if combine == "weighted":
            weights = check_list(cfg.strategy.weights, "strategy.weights", "[0.7,0.3]")
            if len(weights) != len(teachers):
                raise ConfigError(f"strategy.weights has {len(weights)} values for {len(teachers)} teachers "
                                  f"{teachers}; give one weight per teacher")
            for w in weights:
                check_number(w, "each of strategy.weights", low=0)
            if not sum(weights) > 0:
                raise ConfigError(f"strategy.weights={weights} must not all be 0")
        if cfg.teacher.checkpoint:
            raise ConfigError("teacher.checkpoint names one teacher; with strategy=multi_teacher give "
                              "strategy.checkpoints=[path,...], one path (or null) per entry of strategy.teachers")
        if cfg.strategy.checkpoints is not None:
            paths = check_list(cfg.strategy.checkpoints, "strategy.checkpoints", "[a.pt,null]")
            if len(paths) != len(teachers):
                raise ConfigError(f"strategy.checkpoints has {len(paths)} entries for {len(teachers)} teachers "
                                  f"{teachers}; give one path (or null) per teacher")
    elif name == "online":
        for arch in check_list(cfg.strategy.peers, "strategy.peers", "[resnet20,resnet8]"):
            check_choice(arch, "peer in strategy.peers", MODEL_NAMES)
    elif name == "born_again":
        check_number(cfg.strategy.generations, "strategy.generations", low=1, integer=True)
    elif name == "self":
        check_number(cfg.strategy.ce_weight, "strategy.ce_weight", low=0)
