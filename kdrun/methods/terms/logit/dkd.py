"""Decoupled KD (Zhao et al., CVPR 2022): target-class and non-target-class KD, weighted apart.

    dkd = weight * min(epoch / warmup_epochs, 1) * (tckd_weight * TCKD + nckd_weight * NCKD)

mdistiller's names: CE_WEIGHT is the ce term's weight, ALPHA our tckd_weight, BETA our nckd_weight,
WARMUP our warmup_epochs. Logged as two terms, tckd and nckd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.losses import masked_mean
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float,
             labelled: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each T^2 * KL averaged over the batch; with `labelled` (bool per row: a transfer set),
    over the labelled rows alone (0 when a batch has none), since both parts split the classes at the label.

    TCKD compares the binary distributions (p_target, 1 - p_target); NCKD the distributions over the
    non-target classes alone. Works in log space throughout, where the reference takes the log of
    probabilities (the two agree to 1e-5 where the reference does not underflow: tests/test_losses.py).
    """
    s = student_logits.float() / T
    t = teacher_logits.float() / T
    target = F.one_hot(labels.clamp(min=0), s.shape[1]).bool()  # unlabelled rows (-1) are masked out below

    def binary_log_probs(z: Tensor) -> Tensor:
        log_p = F.log_softmax(z, dim=1)
        log_p_target = log_p[target].unsqueeze(1)
        log_p_rest = log_p.masked_fill(target, float("-inf")).logsumexp(1, keepdim=True)
        return torch.cat([log_p_target, log_p_rest], dim=1)

    def non_target_log_probs(z: Tensor) -> Tensor:
        # -inf on the target would make 0 * -inf = nan inside the KL; a large negative value does not.
        return F.log_softmax(z.masked_fill(target, -1e4), dim=1)

    if labelled is None:
        tckd = F.kl_div(binary_log_probs(s), binary_log_probs(t), log_target=True, reduction="batchmean")
        nckd = F.kl_div(non_target_log_probs(s), non_target_log_probs(t), log_target=True, reduction="batchmean")
    else:
        def over_labelled(p: Tensor, q: Tensor) -> Tensor:
            return masked_mean(F.kl_div(p, q, log_target=True, reduction="none").sum(1), labelled)

        tckd = over_labelled(binary_log_probs(s), binary_log_probs(t))
        nckd = over_labelled(non_target_log_probs(s), non_target_log_probs(t))
    return tckd * (T * T), nckd * (T * T)


@register_term
class DKD(LogitTerm):
    name = "dkd"
    uses_labels = True  # the target class splits the distribution
    masks_unlabelled = True  # averaged over the labelled rows of a transfer set

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="the whole decoupled term, before the warm-up ramp")
        T: float = key(default=4.0, low=0, strict=True, follows="T")
        tckd_weight: float = key(default=1.0, low=0, doc="target-class KD (mdistiller's ALPHA)")
        nckd_weight: float = key(default=8.0, low=0, doc="non-target-class KD (mdistiller's BETA)")
        warmup_epochs: int = key(default=20, low=0, doc="linear ramp of the weight; 0 = none")

    def temperature(self) -> float:
        return float(self.config.T)

    def ramp(self, epoch: int) -> float:
        """From 1/warmup_epochs at epoch 1 to 1 at epoch warmup_epochs (mdistiller: min(epoch / WARMUP, 1))."""
        warmup = self.config.warmup_epochs
        return min(epoch / warmup, 1.0) if warmup else 1.0

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        tckd, nckd = dkd_loss(inputs.logits, inputs.teacher_logits, inputs.labels, self.temperature(), inputs.labelled)
        weight = self.weight * self.ramp(inputs.epoch)
        return {"tckd": weight * self.config.tckd_weight * tckd, "nckd": weight * self.config.nckd_weight * nckd}
