"""Vanilla knowledge distillation (Hinton et al. 2015): T^2 * KL(softmax(t/T) || softmax(s/T))."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    Both sides go through log_softmax (log_target=True): stable, and exact even where the teacher's
    probabilities underflow. The T^2 keeps the gradient scale independent of T (Hinton et al. 2015).
    Computed in fp32 under autocast.
    """
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * (T * T)


@register_term
class KD(LogitTerm):
    """weight * T^2 * KL. Our `weight` is RepDistiller's -a, mdistiller's KD_WEIGHT, torchdistill's alpha."""

    name = "kd"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0)
        T: float = key(default=4.0, low=0, strict=True, follows="T", doc="the temperature")

    def temperature(self) -> float:
        return float(self.config.T)

    def forward(self, inputs: TermInputs) -> dict[str, torch.Tensor]:
        return self.weighted(kd_loss(inputs.logits, inputs.teacher_logits, self.temperature()))
