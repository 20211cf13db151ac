"""Optimisers and per-step learning-rate schedules from the `optim` config group."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from kdrun.engine.dot import DistillationOrientedTrainer
from kdrun.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw", "dot")
SCHEDULES = ("cosine", "multistep", "constant")


def build_optimizer(params, cfg, task_losses: frozenset[str] = frozenset()) -> torch.optim.Optimizer:
    """`task_losses`: the step's loss names that are the task's, for dot (which keeps the two gradients apart)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=bool(cfg.nesterov), weight_decay=cfg.weight_decay
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "dot":
        return DistillationOrientedTrainer(params, lr=cfg.lr, momentum=cfg.momentum, delta=cfg.delta,
                                           weight_decay=cfg.weight_decay, task_losses=task_losses)
    raise ConfigError(f"unknown optim.name {cfg.name!r}; allowed: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, cfg) -> float:
    """Multiplier of the base lr after `step` optimiser steps: linear warm-up, then the schedule."""
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        total = max(1, epochs * steps_per_epoch - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / total)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    raise ConfigError(f"unknown optim.schedule {cfg.schedule!r}; allowed: {', '.join(SCHEDULES)}")


def build_scheduler(optimizer, cfg, *, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """A scheduler stepped once per optimiser step."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=epochs, cfg=cfg))
