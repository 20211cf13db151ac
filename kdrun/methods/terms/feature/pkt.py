"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the student's conditional probabilities
of each sample's neighbours, from cosine similarities, match the teacher's by KL divergence.

Reference: RepDistiller (distiller_zoo/PKT.py, the authors' code), CIFAR-100 row `-r 1 -a 0 -b 30000`.
It reads `feat[-1]`, the penultimate embedding: here the last stage average-pooled (`embedding`, the zoo
classifiers' input), `student_stage=-1`, `teacher_stage=-1`, or a named layer, pooled the same way.
Cosine similarities scaled to [0, 1], each row normalised to sum 1; the term is the mean over all B x B
entries of p_t log((p_t + eps) / (p_s + eps)), eps 1e-7, as the reference (a mean, not a per-row sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm, embedding

EPS = 1e-7  # the reference's


def neighbour_probabilities(x: Tensor) -> Tensor:
    """(B, D) -> (B, B): cosine similarity mapped to [0, 1], each row divided by its sum."""
    unit = x / (x.norm(dim=1, keepdim=True) + EPS)
    unit = torch.where(unit.isnan(), torch.zeros_like(unit), unit)  # as the reference: NaN (from NaN input) is 0
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    p_s, p_t = neighbour_probabilities(student_embedding), neighbour_probabilities(teacher_embedding)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


@register_term
class ProbabilisticTransfer(OneStageTerm):
    name = "pkt"

    @dataclass
    class Config(OneStageKeys):
        weight: float = key(default=30000.0, low=0)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        s, t = self.read(inputs)
        return self.weighted(pkt_loss(embedding(s), embedding(t)))
