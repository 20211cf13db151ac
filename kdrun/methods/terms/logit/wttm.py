"""Weighted transformed teacher matching (Zheng & Yang, "Knowledge Distillation Based on Transformed
Teacher Matching", ICLR 2024), reference zkxufo/TTM (distiller_zoo/wttm.py).

Temperature on the teacher's side only, written as a power transform of its probabilities, and each
sample weighted by how much the transform spreads that sample's distribution:

    p_t = softmax(t),  U = sum_c p_t(c)^gamma,  q = p_t^gamma / U      (q = softmax(t * gamma))
    wttm = weight * mean_i  U_i * KL(q_i || softmax(s_i))

The reference's names: ttm_l is our gamma (the power; 1 / gamma acts as the teacher's temperature), -b the
term's weight, -r the ce weight. Its README's example (TTM, vgg13 -> vgg8) uses ttm_l 0.1 with -b 45.
We compute q as softmax(gamma * t) and log U as logsumexp(gamma * log_softmax(t)), which equal the
reference's power-and-normalise in exact arithmetic and stay finite where p_t^gamma underflows.
`temperature()` is 1 / gamma: the temperature at which the term reads the teacher's logits (what the
teacher-output cache keeps exact, and what loss.standardize counts as a temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> Tensor:
    """mean_i U_i * KL(q_i || p_s,i) (see the module doc), in fp32."""
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    powered = gamma * F.log_softmax(teacher_logits.float(), dim=1)  # log p_t^gamma
    log_u = torch.logsumexp(powered, dim=1)
    log_q = powered - log_u.unsqueeze(1)
    kl = (log_q.exp() * (log_q - log_p_s)).sum(1)
    return (log_u.exp() * kl).mean()


@register_term
class WTTM(LogitTerm):
    name = "wttm"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="the whole term (the reference's -b)")
        gamma: float = key(default=0.1, low=0, strict=True, doc="the power on the teacher's probabilities "
                           "(the reference's ttm_l); 1 / gamma is the teacher's temperature")

    def temperature(self) -> float:
        return 1.0 / float(self.config.gamma)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(wttm_loss(inputs.logits, inputs.teacher_logits, self.config.gamma))
