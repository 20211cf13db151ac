"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): match the teacher's
relations instead of its exact probabilities, reference hunto/DIST_KD.

    Y_s = softmax(s / tau), Y_t = softmax(t / tau)              (B x C)
    inter = 1 - mean over samples of pearson(Y_s[i, :], Y_t[i, :])   (each sample's class ranking)
    intra = 1 - mean over classes of pearson(Y_s[:, c], Y_t[:, c])   (each class's ranking of the samples)
    dist  = weight * tau^2 * (inter_weight * inter + intra_weight * intra)

The reference's names: beta is our inter_weight, gamma our intra_weight, tau our T; its classification
defaults are beta = gamma = tau = 1 (the weight of the whole term, `--kd-loss-weight`, is ours `weight`).
Pearson's r is the cosine of the centred vectors with 1e-8 added to the product of the norms, as the
reference computes it, so two constant vectors give r = 0 rather than nan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson's r between matching rows of a and b."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(inter, intra), each tau^2 * (1 - mean Pearson r). Computed in fp32 under autocast."""
    y_s = F.softmax(student_logits.float() / T, dim=1)
    y_t = F.softmax(teacher_logits.float() / T, dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return inter * (T * T), intra * (T * T)


@register_term
class DIST(LogitTerm):
    name = "dist"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="the whole term (the reference's --kd-loss-weight)")
        T: float = key(default=1.0, low=0, strict=True, doc="tau: the softmax temperature of both sides")
        inter_weight: float = key(default=1.0, low=0, doc="inter-class relation, per sample (the reference's beta)")
        intra_weight: float = key(default=1.0, low=0, doc="intra-class relation, per class (the reference's gamma)")

    def temperature(self) -> float:
        return float(self.config.T)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        inter, intra = dist_loss(inputs.logits, inputs.teacher_logits, self.temperature())
        return {"dist_inter": self.weight * self.config.inter_weight * inter,
                "dist_intra": self.weight * self.config.intra_weight * intra}
