"""Relational KD (Park et al., CVPR 2019): distances between pairs and angles between triplets of samples'
embeddings, the student's matching the teacher's.

Reference: RepDistiller (distiller_zoo/RKD.py), CIFAR-100 row `-r 1 -a 0 -b 1` with its distance weight 25
and angle weight 50 (the paper's), here `distance_weight` and `angle_weight`; the two parts are logged
apart, as `loss_rkd_distance` and `loss_rkd_angle`, each already times `weight`. It reads `feat[-1]`, the
penultimate embedding: here the last stage average-pooled (`embedding`), or a named layer pooled the same
way. Distances are normalised by their mean over distinct pairs; both parts are the Huber (smooth L1,
beta 1) loss averaged over all pairs / triplets, the teacher's side without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm, embedding


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances from the expanded square (clamped at eps before the root, so
    the gradient stays finite), zero on the diagonal, as the reference."""
    squared = x.pow(2).sum(1)
    d = (squared[:, None] + squared[None, :] - 2 * x @ x.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def normalised_distances(x: Tensor) -> Tensor:
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


def angles(x: Tensor) -> Tensor:
    """(B, D) -> (B, B, B): cos of the angle at sample i between j and k, <e_ij, e_ik> with e_ij the unit
    vector from i to j."""
    e = F.normalize(x[None, :, :] - x[:, None, :], dim=2)
    return e @ e.transpose(1, 2)


def rkd_losses(student_embedding: Tensor, teacher_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """(distance loss, angle loss), unweighted."""
    with torch.no_grad():
        t_distance, t_angle = normalised_distances(teacher_embedding), angles(teacher_embedding)
    distance = F.smooth_l1_loss(normalised_distances(student_embedding), t_distance)
    angle = F.smooth_l1_loss(angles(student_embedding), t_angle)
    return distance, angle


@register_term
class Relational(OneStageTerm):
    name = "rkd"

    @dataclass
    class Config(OneStageKeys):
        distance_weight: float = key(default=25.0, low=0, doc="the distance part's weight (the paper's 25)")
        angle_weight: float = key(default=50.0, low=0, doc="the angle part's weight (the paper's 50)")

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        s, t = self.read(inputs)
        distance, angle = rkd_losses(embedding(s), embedding(t))
        return {"rkd_distance": self.weight * self.config.distance_weight * distance,
                "rkd_angle": self.weight * self.config.angle_weight * angle}
