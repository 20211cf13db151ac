"""Checks on a composed config, with messages that name the bad value and what is allowed.

Hydra already refuses unknown keys (configs are in struct mode) and unknown
group options (listing the available ones); this covers the values.
"""

from __future__ import annotations

from omegaconf import DictConfig

from kdrun.data import DATASET_NAMES
from kdrun.errors import ConfigError
from kdrun.models import MODEL_NAMES
from kdrun.optim import OPTIMIZERS, SCHEDULES

STRATEGIES = ("scratch", "kd")
LOSSES = ("kd", "ce")


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

    if cfg.strategy.name == "kd":
        check_choice(cfg.teacher.arch, "teacher", MODEL_NAMES)
        check_number(cfg.teacher.epochs, "teacher.epochs", low=1, integer=True)
        check_number(cfg.teacher.seed, "teacher.seed", low=0, integer=True)
        check_choice(cfg.loss.name, "loss", LOSSES)
        if cfg.loss.name == "ce":
            raise ConfigError("strategy=kd with loss=ce has no distillation term; "
                              "use strategy=scratch to train on labels, or loss=kd")
        check_number(cfg.loss.T, "T (loss.T)", low=0, strict=True)
        check_number(cfg.loss.alpha, "loss.alpha", low=0)
        check_number(cfg.loss.beta, "loss.beta", low=0)
