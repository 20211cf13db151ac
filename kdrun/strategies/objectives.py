"""What a student learns from a teacher's logits, as named terms: `loss=kd` or `loss=dkd`.

An objective is called as objective(logits, teacher_logits, labels, epoch, labelled) and
returns weighted terms; label-using terms compute over the rows `labelled` marks (None: all). Every logit-based strategy (kd, multi_teacher, online,
born_again, self) uses the one the `loss` group names. An objective is one class
that registers under its `loss.name` with `@register_objective` and builds itself
from the loss group (`from_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from omegaconf import DictConfig
from torch import Tensor

from kdrun.errors import ConfigError
from kdrun.losses import cross_entropy, dkd_loss, kd_loss


class Objective(Protocol):
    T: float

    def __call__(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int,
                 labelled: Tensor | None = None) -> dict[str, Tensor]: ...


OBJECTIVES: dict[str, type] = {}
LABELS_ONLY = "ce"  # loss=ce: cross-entropy alone, what strategy=scratch trains; no distillation term


def register_objective(name: str):
    """Class decorator: `loss.name=<name>` builds this objective with its `from_config(loss_cfg)`."""

    def add(cls: type) -> type:
        OBJECTIVES[name] = cls
        return cls

    return add


def loss_names() -> tuple[str, ...]:
    return (*OBJECTIVES, LABELS_ONLY)


def build_objective(loss_cfg: DictConfig) -> Objective:
    if loss_cfg.name not in OBJECTIVES:
        raise ConfigError(f"loss={loss_cfg.name} has no distillation term; allowed for distillation: "
                          f"{', '.join(OBJECTIVES)} (strategy=scratch trains on the labels alone)")
    return OBJECTIVES[loss_cfg.name].from_config(loss_cfg)


@register_objective("kd")
@dataclass(frozen=True)
class KDObjective:
    """alpha * CE(s, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T))."""

    alpha: float
    beta: float
    T: float

    @classmethod
    def from_config(cls, loss: DictConfig) -> KDObjective:
        return cls(loss.alpha, loss.beta, loss.T)

    def __call__(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int,
                 labelled: Tensor | None = None, mixed: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        return {
            "ce": self.alpha * cross_entropy(logits, labels, labelled, mixed),
            "kd": self.beta * kd_loss(logits, teacher_logits, self.T),
        }


@register_objective("dkd")
@dataclass(frozen=True)
class DKDObjective:
    """alpha * CE + beta * ramp(epoch) * (tckd_weight * TCKD + nckd_weight * NCKD).

    ramp rises linearly from 1/warmup_epochs at epoch 1 to 1 at epoch
    warmup_epochs (mdistiller: min(epoch / WARMUP, 1)); warmup_epochs=0 is no warm-up.
    """

    alpha: float
    beta: float
    T: float
    tckd_weight: float
    nckd_weight: float
    warmup_epochs: int

    @classmethod
    def from_config(cls, loss: DictConfig) -> DKDObjective:
        return cls(loss.alpha, loss.beta, loss.T, loss.tckd_weight, loss.nckd_weight, loss.warmup_epochs)

    def ramp(self, epoch: int) -> float:
        return min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0

    def __call__(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int,
                 labelled: Tensor | None = None) -> dict[str, Tensor]:
        tckd, nckd = dkd_loss(logits, teacher_logits, labels, self.T, labelled)
        weight = self.beta * self.ramp(epoch)
        return {
            "ce": self.alpha * cross_entropy(logits, labels, labelled),
            "tckd": weight * self.tckd_weight * tckd,
            "nckd": weight * self.nckd_weight * nckd,
        }

