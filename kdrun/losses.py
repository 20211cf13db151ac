"""Loss maths that several strategies share: pure tensor functions, no configs.

Each distillation term keeps its own maths in its file (kdrun/methods/terms/); what is here is the
labels' cross-entropy and the combination of several teachers' outputs. Logit maths is computed in
fp32 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor | None = None,
                  mixed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled rows (`labelled`: bool per row; None: every row), 0 when a
    batch has none. Unlabelled rows (label -1) contribute no value and no gradient; masking rather than
    indexing keeps the batch's shape, so no device sync. `mixed`: (partner labels, own share) of mixup or
    cutmix rows, whose target is own_share * labels + (1 - own_share) * partner labels."""
    if labelled is None and mixed is None:
        return F.cross_entropy(logits.float(), labels)
    per_row = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
    if mixed is not None:
        partner, own = mixed
        partner_rows = F.cross_entropy(logits.float(), partner.clamp(min=0), reduction="none")
        per_row = own * per_row + (1 - own) * partner_rows
    return masked_mean(per_row, labelled)


def masked_mean(per_row: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
    """The mean of per-row values over the rows `labelled` marks (all rows where None); 0 if none."""
    if labelled is None:
        return per_row.mean()
    return torch.where(labelled, per_row, 0.0).sum() / labelled.sum().clamp(min=1)


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
