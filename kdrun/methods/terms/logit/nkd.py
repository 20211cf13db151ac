"""Normalized KD (Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified
Approach with Normalized Loss and Customized Soft Labels", ICCV 2023), reference yzd-v/cls_KD
(mmcls/models/dis_losses/nkd.py).

KD's loss splits into a target part and a non-target part whose scale depends on the target's
probability; NKD normalises the non-target part to a distribution over the other classes:

    target     = -mean_i  p_t(y_i) * log p_s(y_i)                                    (at T = 1)
    non_target = -gamma * T^2 * mean_i  sum_{c != y_i} q_t(c) * log q_s(c)
    q(c)       = softmax over the non-target classes of logits / T
    nkd        = weight * (target + non_target)

The reference's names: temp is our T, gamma our gamma; its defaults are temp = 1, gamma = 1.5 (ImageNet),
and its CIFAR-100 config (res34 -> res18) temp = 3, gamma = 3.5. The student's own cross-entropy stays a
separate term (ce, weight 1 there). The reference also takes soft label rows (their argmax); kdrun's
labels are class indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term


def nkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float, gamma: float) -> Tensor:
    """target + non_target (see the module doc), averaged over the batch, in fp32."""
    s, t = student_logits.float(), teacher_logits.float()
    index = labels.view(-1, 1)
    log_p_s_target = F.log_softmax(s, dim=1).gather(1, index)
    p_t_target = F.softmax(t, dim=1).gather(1, index)
    target = -(p_t_target * log_p_s_target).mean()
    rest = torch.ones_like(s, dtype=torch.bool).scatter_(1, index, False)
    n, c = s.shape
    log_q_s = F.log_softmax(s[rest].view(n, c - 1) / T, dim=1)
    q_t = F.softmax(t[rest].view(n, c - 1) / T, dim=1)
    non_target = -gamma * T * T * (q_t * log_q_s).sum(1).mean()
    return target + non_target


@register_term
class NKD(LogitTerm):
    name = "nkd"
    uses_labels = True  # the target class splits the distribution

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="the whole term")
        T: float = key(default=1.0, low=0, strict=True, doc="the non-target part's temperature (the reference's temp)")
        gamma: float = key(default=1.5, low=0, doc="the non-target part's weight")

    def temperature(self) -> float:
        return float(self.config.T)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(nkd_loss(inputs.logits, inputs.teacher_logits, inputs.labels, self.temperature(),
                                      self.config.gamma))
