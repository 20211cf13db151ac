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
from kdrun.methods.terms.base import FeatureTerm, TermInputs, register_term
from kdrun.methods.terms.feature.picks import layers_of, pick_one
from kdrun.methods.terms.feature.stages import FeatureContext


def similarity(features: Tensor) -> Tensor:
    """(B, ...) -> (B, B): the Gram matrix of the flattened samples, each row L2-normalised."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Squared Frobenius distance of the two similarity matrices, divided by B^2."""
    b = student_features.shape[0]
    return (similarity(teacher_features) - similarity(student_features)).pow(2).sum() / (b * b)


@register_term
class SimilarityPreserving(FeatureTerm):
    name = "sp"

    @dataclass
    class Config:
        weight: float = key(default=3000.0, low=0)
        student_stage: int = key(default=-1, doc="the student stage read (negative: from the end)")
        teacher_stage: int = key(default=-1)
        student_layer: str | None = key(doc="a layer by module path instead of a stage, e.g. layer4")
        teacher_layer: str | None = key()

    def __init__(self, config, refs):
        super().__init__(config)
        self.refs = refs  # (student, teacher) stage index or layer name

    @classmethod
    def build(cls, config, context: FeatureContext) -> "SimilarityPreserving":
        return cls(config, pick_one(cls.name, config, context)[0])

    def layer_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return layers_of([self.refs])

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        s, t = self.refs
        return self.weighted(sp_loss(inputs.features[s], inputs.teacher_features[t]))
