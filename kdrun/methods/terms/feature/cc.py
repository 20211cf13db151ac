"""Correlation congruence (Peng et al., ICCV 2019): relations between samples, through a trained
embedding of each model, rather than each sample's features alone.

Reference: RepDistiller (distiller_zoo/CC.py), CIFAR-100 row `-r 1 -a 0 -b 0.02`. What it implements is
the code the authors shared with it, not the paper's Gaussian-kernel Taylor expansion: each model's
penultimate embedding (`feat[-1]`) goes through its own trained linear map to `embed_dim` (128,
LinearEmbed, no normalisation), then with delta_i = |e_s,i - e_t,i| (elementwise) the term is the mean over
consecutive samples i of sum_c delta_i,c * delta_i+1,c. We follow that code, since its numbers are the
published row. The embedding here is the last stage average-pooled (`embedding`) or a named layer, pooled
the same way. Both linear maps train with the student (the teacher's too, as in the reference), are kept
in last.pt for resume, and are never saved with the student.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm, embedding, embedding_size


def cc_loss(student_embedded: Tensor, teacher_embedded: Tensor) -> Tensor:
    """Mean over i < B-1 of sum_c |s_i - t_i|_c * |s_i+1 - t_i+1|_c."""
    delta = (student_embedded - teacher_embedded).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_term
class CorrelationCongruence(OneStageTerm):
    name = "cc"

    @dataclass
    class Config(OneStageKeys):
        weight: float = key(default=0.02, low=0)
        embed_dim: int = key(default=128, low=1, doc="the trained embeddings' size (RepDistiller's feat_dim)")

    def __init__(self, config, refs, shapes):
        super().__init__(config, refs)
        self.embed_student = nn.Linear(embedding_size(shapes[0]), config.embed_dim)
        self.embed_teacher = nn.Linear(embedding_size(shapes[1]), config.embed_dim)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        s, t = self.read(inputs)
        return self.weighted(cc_loss(self.embed_student(embedding(s)), self.embed_teacher(embedding(t))))
