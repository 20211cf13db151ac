"""Where `optim=dot` cannot work, refused before anything trains: it needs a step whose losses split into a
task part (terms that train on the labels alone: ce) and a distillation part, and gradients it sees whole."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from kdrun.errors import ConfigError
from kdrun.methods.terms.compose import term_configs


def check_dot(cfg: DictConfig, strategy: str) -> None:
    teacher_optim = (cfg.get("teacher") or {}).get("optim") or {}
    if teacher_optim.get("name") == "dot":
        raise ConfigError("teacher.optim.name=dot: a teacher trains on the labels alone, with no distillation "
                          "gradient for dot to keep apart; give the teacher sgd or adamw (teacher.optim=...)")
    if cfg.optim.name != "dot":
        return
    if strategy != "kd":
        raise ConfigError(f"optim=dot keeps the task's and the distillation's gradients apart, and strategy="
                          f"{strategy} has no such split; use it with strategy=kd, or optim=sgd")
    if cfg.optim.get("delta") is None or cfg.optim.delta > cfg.optim.momentum:
        raise ConfigError(f"optim.delta={cfg.optim.get('delta')} with optim.momentum={cfg.optim.momentum}: dot's task "
                          f"momentum is momentum - delta, so delta must be set and at most the momentum")
    listed = list(term_configs(cfg))
    if not any(not cls.distils and config.weight > 0 for _, cls, config in listed):
        raise ConfigError(f"optim=dot needs a task term (one that trains on the labels alone: ce) with weight > 0 "
                          f"beside the distillation terms, and loss={cfg.loss.get('name')} has none (terms: "
                          f"{', '.join(f'{n} (weight {c.weight})' for n, _, c in listed)}); add loss.terms.ce."
                          f"weight=1, or use optim=sgd")
    if cfg.device.get("precision") == "fp16":
        raise ConfigError("optim=dot with device.precision=fp16: dot's distillation gradient is taken apart from "
                          "the loss scaler; use device.precision=bf16 or fp32")
    if cfg.trainer.get("clip_grad_norm") is not None:
        raise ConfigError(f"optim=dot with trainer.clip_grad_norm={cfg.trainer.clip_grad_norm}: clipping would see "
                          f"only the task gradient; set trainer.clip_grad_norm=null")
    if (cfg.device.get("processes") or 1) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("optim=dot runs in one process: its distillation gradient is not averaged across "
                          "processes; set device.processes=1 and run without torchrun")
