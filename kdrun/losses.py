"""Loss maths that several strategies share: pure tensor functions, no configs.

Each distillation term keeps its own maths in its file (kdrun/methods/terms/); what is here is the
labels' cross-entropy and the combination of several teachers' outputs. Logit maths is computed in
fp32 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def mixture_logits(teacher_logits: list[torch.Tensor], weights: torch.Tensor, T: float) -> torch.Tensor:
    """Logits whose softmax at temperature T is sum_k w_k softmax(t_k / T).

    `weights` is (K,) or per sample (B, K), rows summing to 1. The result is
    T * log(mixture), so any loss that takes teacher logits (kd, dkd) learns
    from the combined softened outputs of several teachers unchanged.
    """
    log_p = torch.stack([F.log_softmax(t.float() / T, dim=1) for t in teacher_logits], dim=1)  # (B, K, C)
    log_w = weights.float().log().expand(log_p.shape[:2]).unsqueeze(2)
    return T * (log_p + log_w).logsumexp(dim=1)


def confidence_weights(teacher_logits: list[torch.Tensor]) -> torch.Tensor:
    """(B, K) per-sample teacher weights: each teacher's top-class probability, normalised over teachers.

    Label-free, so the same weighting serves training and the ensemble's test accuracy.
    """
    confidence = torch.stack([F.softmax(t.float(), dim=1).amax(dim=1) for t in teacher_logits], dim=1)
    return confidence / confidence.sum(dim=1, keepdim=True)
