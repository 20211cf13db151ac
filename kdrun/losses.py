"""Loss functions: pure tensor maths, no configs.

The convention everywhere in kdrun (see DESIGN.md):
    loss = alpha * CE(student, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    Both sides go through log_softmax (log_target=True): stable, and exact even
    where the teacher's probabilities underflow. The T^2 keeps the gradient
    scale independent of T (Hinton et al. 2015). Computed in fp32 under autocast.
    """
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * (T * T)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)
