"""Similarity-preserving KD (Tung & Mori, ICCV 2019): the student's batch similarity matrix matches the
teacher's.

Reference: RepDistiller (HobbitLong/RepDistiller, distiller_zoo/SP.py), CIFAR-100 row `-r 1 -a 0 -b 3000`.
It reads `feat[-2]`, the last stage's output map, here the last stage (`student_stage=-1`,
`teacher_stage=-1`), flattened, not pooled. G = F F^T over the batch, each row L2-normalised; the term is
||G_t - G_s||_F^2 / B^2. Student and teacher may differ in every dimension: only the B x B matrices meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm


def similarity(features: Tensor) -> Tensor:
    """(B, ...) -> (B, B): the Gram matrix of the flattened samples, each row L2-normalised."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Squared Frobenius distance of the two similarity matrices, divided by B^2."""
    b = student_features.shape[0]
    return (similarity(teacher_features) - similarity(student_features)).pow(2).sum() / (b * b)


@register_term
class SimilarityPreserving(OneStageTerm):
    name = "sp"

    @dataclass
    class Config(OneStageKeys):
        weight: float = key(default=3000.0, low=0)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(sp_loss(*self.read(inputs)))
