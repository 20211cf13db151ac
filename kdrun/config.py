"""Checks on a composed config, with messages that name the bad value and what is allowed.

Hydra already refuses unknown keys on the command line (configs are in struct
mode) and unknown group options (listing the available ones). `check_known_keys`
catches the keys Hydra lets through: a typo in an experiment file, or a `+key=`.
`validate` covers the values.
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from typing import Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.data import DATASET_NAMES
from kdrun.deploy.prune import check_prune_config
from kdrun.errors import ConfigError
from kdrun.models import MODEL_NAMES
from kdrun.optim import OPTIMIZERS, SCHEDULES
from kdrun.strategies.multi_teacher import COMBINES
from kdrun.trainer import ON_NONFINITE

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
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
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
    check_prune_config(cfg.student.get("prune") or {})
    check_number(cfg.seed, "seed", low=0, integer=True)
    check_number(cfg.data_seed, "data_seed", low=0, integer=True)
    check_number(cfg.trainer.epochs, "epochs", low=1, integer=True)
    check_number(cfg.trainer.batch_size, "batch_size", low=1, integer=True)
    check_number(cfg.trainer.eval_batch_size, "trainer.eval_batch_size", low=1, integer=True)
    for key in ("crop_padding",):
        check_number(cfg.dataset.augment[key], f"dataset.augment.{key}", low=0, integer=True)
    validate_sizes(cfg.dataset)
    check_choice(cfg.trainer.on_nonfinite, "trainer.on_nonfinite", ON_NONFINITE)
    if cfg.checkpoint.every_steps is not None:
        check_number(cfg.checkpoint.every_steps, "checkpoint.every_steps (or null)", low=1, integer=True)
    if cfg.resume is not None and not isinstance(cfg.resume, str):
        raise ConfigError(f"resume must be a run directory or auto, got {cfg.resume!r}")

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


def validate_sizes(dataset: DictConfig) -> None:
    """Sample counts and shapes: positive integers (or null where null means all)."""
    for key in ("limit_train", "limit_test"):
        if dataset.get(key) is not None:
            check_number(dataset[key], f"dataset.{key} (or null for all)", low=1, integer=True)
    if dataset.name == "synthetic":
        for key in ("num_classes", "image_size", "channels", "train_size", "test_size"):
            check_number(dataset[key], f"dataset.{key}", low=1, integer=True)


def check_known_keys(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    """Refuse keys that no kdrun config file defines, so that a typo never passes silently.

    The known keys are those of conf/config.yaml plus those of each chosen group option
    (`choices`, as hydra.runtime.choices); a group whose option is not one of kdrun's own
    files (a user's config dir) is not checked.
    """
    conf = resources.files("kdrun.conf")
    known = _load_yaml(conf.joinpath("config.yaml"))
    for key in ("defaults", "hydra"):
        known.pop(key, None)
    for group, option in choices.items():
        if option is None or group.startswith("hydra") or group == "experiment":
            continue  # an experiment sets keys that the other files define
        option_file = conf.joinpath(group, f"{option}.yaml")
        if option_file.is_file():
            known[group] = _merged(known.get(group, {}), _load_yaml(option_file))
        else:
            known[group] = None  # not ours: kdrun cannot know its keys
    unknown = _unknown_keys(OmegaConf.to_container(cfg, resolve=False), known)
    if unknown:
        key, siblings = unknown[0]
        parent, _, leaf = key.rpartition(".")
        match = difflib.get_close_matches(leaf, siblings, n=1)
        hint = f"; did you mean {parent + '.' if parent else ''}{match[0]}?" if match else ""
        raise ConfigError(f"unknown config key {key!r}{hint} (no kdrun config defines it; check the experiment "
                          f"file or `+` override that sets it)")


def _load_yaml(path) -> dict:
    node = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=False)
    return node if isinstance(node, dict) else {}


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        both_dicts = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _merged(out[key], value) if both_dicts else value
    return out


def _unknown_keys(cfg: dict, known: dict, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, the known keys beside it) for each key of cfg that `known` lacks; a known
    value of None (a group kdrun has no file for) accepts anything."""
    out = []
    for key, value in cfg.items():
        if key not in known:
            out.append((f"{prefix}{key}", [str(k) for k in known]))
        elif isinstance(value, dict) and isinstance(known[key], dict):
            out += _unknown_keys(value, known[key], f"{prefix}{key}.")
    return out
