"""Multi-level logit distillation (Jin et al., CVPR 2023), reference Jin-Ying/Multi-Level-Logit-Distillation
(mdistiller/distillers/KD_ours.py), as logit standardisation's repository carries it (MLKD.py).

Three alignments, each summed over several temperatures T (the reference: 4, 3, 5, 2, 6):

    instance  T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch            (kd)
    batch     |P_t P_t^T - P_s P_s^T|^2 summed / B   P = softmax(logits/T), B x B Gram     (sample relations)
    class     |P_t^T P_t - P_s^T P_s|^2 summed / C   C x C Gram                          (class relations)

Confidence masking, as the reference computes it: the teacher's top probability (at T = 1) of each
sample, and its summed probability of each class, are compared with their medians (numpy's percentile
50, linear interpolation, which torch.quantile matches). The reference multiplies each already-reduced
loss by the mask and averages, so the masks act as factors: instance and batch terms are scaled by the
fraction of samples whose confidence is at or below the median, the class term by the fraction of
classes at or below theirs. That is what produced the published numbers, so we compute exactly that
(the reference's `reduce=False`, a per-sample mask, is commented out there).

    mlkd = weight * sum_T (m * instance_T + m * batch_T + c * class_T)

Logged as three terms: mlkd_instance, mlkd_batch, mlkd_class. The reference's KD_WEIGHT is our weight
(0.9, with CE_WEIGHT 0.1 as ce), its KD.TEMPERATURE our T (the first temperature; the others are fixed
there, ours `other_temperatures`).

With loss.standardize, every part here (the masks included) reads the z-scored logits, as the switch
does for every term with a temperature; logit standardisation's own MLKD z-scores the instance terms
only, leaving the batch and class terms and the masks on the raw logits.

Not here, on purpose: the reference's recipe trains on two views of each batch, a weak and a strong
(AutoAugment-style) augmentation. Its loss adds, on the strong view, unmasked instance terms and the
cross-entropy; kdrun's strategies feed one view, which plays the weak view's part. Without the strong
view, this is the reference's weak-view loss, so published MLKD numbers are not expected from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term
from kdrun.methods.terms.logit.kd import kd_loss


def batch_relation(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """|P_t P_t^T - P_s P_s^T|^2 summed, over the batch size."""
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / p_s.shape[0]


def class_relation(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """|P_t^T P_t - P_s^T P_s|^2 summed, over the number of classes."""
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / p_s.shape[1]


def below_median_fraction(values: Tensor) -> Tensor:
    """The fraction of values at or below their median (numpy's percentile 50)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


def mlkd_loss(student_logits: Tensor, teacher_logits: Tensor, temperatures: list[float]) -> dict[str, Tensor]:
    """Instance, batch and class alignment summed over `temperatures`, with the reference's confidence
    masks (see the module doc)."""
    p_t = F.softmax(teacher_logits.detach().float(), dim=1)
    sample_mask = below_median_fraction(p_t.max(1).values)
    class_mask = below_median_fraction(p_t.sum(0))
    return {"instance": sample_mask * sum(kd_loss(student_logits, teacher_logits, T) for T in temperatures),
            "batch": sample_mask * sum(batch_relation(student_logits, teacher_logits, T) for T in temperatures),
            "class": class_mask * sum(class_relation(student_logits, teacher_logits, T) for T in temperatures)}


@register_term
class MLKD(LogitTerm):
    name = "mlkd"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="every alignment at every temperature (KD_WEIGHT)")
        T: float = key(default=4.0, low=0, strict=True, follows="T", doc="the first temperature (KD.TEMPERATURE)")
        other_temperatures: list[float] = key(default=(3.0, 5.0, 2.0, 6.0), low=0, strict=True,
                                              doc="the further temperatures the reference fixes")

    def temperature(self) -> float:
        return float(self.config.T)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        temperatures = [self.temperature(), *map(float, self.config.other_temperatures)]
        parts = mlkd_loss(inputs.logits, inputs.teacher_logits, temperatures)
        return {f"mlkd_{level}": self.weight * value for level, value in parts.items()}
