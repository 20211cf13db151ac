"""What a student learns from a teacher's logits, as named terms: `loss=kd` or `loss=dkd`.

An objective is called as objective(logits, teacher_logits, labels, epoch) and
returns weighted terms. Every logit-based strategy (kd, multi_teacher, online,
born_again, self) uses the one the `loss` group names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdrun.losses import cross_entropy, dkd_loss, kd_loss


@dataclass(frozen=True)
class KDObjective:
    """alpha * CE(s, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T))."""

    alpha: float
    beta: float
    T: float

    def __call__(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int) -> dict[str, Tensor]:
        return {
            "ce": self.alpha * cross_entropy(logits, labels),
            "kd": self.beta * kd_loss(logits, teacher_logits, self.T),
        }


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

    def ramp(self, epoch: int) -> float:
        return min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0

    def __call__(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int) -> dict[str, Tensor]:
        tckd, nckd = dkd_loss(logits, teacher_logits, labels, self.T)
        weight = self.beta * self.ramp(epoch)
        return {
            "ce": self.alpha * cross_entropy(logits, labels),
            "tckd": weight * self.tckd_weight * tckd,
            "nckd": weight * self.nckd_weight * nckd,
        }


Objective = KDObjective | DKDObjective


def build_objective(loss_cfg) -> Objective:
    if loss_cfg.name == "dkd":
        return DKDObjective(loss_cfg.alpha, loss_cfg.beta, loss_cfg.T, loss_cfg.tckd_weight, loss_cfg.nckd_weight,
                            loss_cfg.warmup_epochs)
    return KDObjective(loss_cfg.alpha, loss_cfg.beta, loss_cfg.T)
