"""Loss functions: pure tensor maths, no configs.

The convention everywhere in kdrun (docs/design.md, "The loss, one meaning everywhere"):
    loss = alpha * CE(student, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T))

Logit terms are computed in fp32 under autocast; feature terms follow the
features' dtype, as the references do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    Both sides go through log_softmax (log_target=True): stable, and exact even
    where the teacher's probabilities underflow. The T^2 keeps the gradient
    scale independent of T (Hinton et al. 2015). Computed in fp32 under autocast.
    """
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * (T * T)


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


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             T: float, labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD (Zhao et al. 2022): (TCKD, NCKD), each T^2 * KL averaged over the batch.

    Both parts split the classes at the true label, so with `labelled` (bool per row) they are averaged
    over the labelled rows alone (0 when a batch has none).

    TCKD compares the binary distributions (p_target, 1 - p_target); NCKD the
    distributions over the non-target classes alone. Unweighted: the caller
    applies alpha/beta and the warm-up. Works in log space throughout, where
    the reference implementation takes log of probabilities.
    """
    s = student_logits.float() / T
    t = teacher_logits.float() / T
    target = F.one_hot(labels.clamp(min=0), s.shape[1]).bool()  # unlabelled rows (-1) are masked out below

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(z, dim=1)
        log_p_target = log_p[target].unsqueeze(1)
        log_p_rest = log_p.masked_fill(target, float("-inf")).logsumexp(1, keepdim=True)
        return torch.cat([log_p_target, log_p_rest], dim=1)

    def non_target_log_probs(z: torch.Tensor) -> torch.Tensor:
        # -inf on the target would make 0 * -inf = nan inside the KL; a large negative value does not.
        return F.log_softmax(z.masked_fill(target, -1e4), dim=1)

    if labelled is None:
        tckd = F.kl_div(binary_log_probs(s), binary_log_probs(t), log_target=True, reduction="batchmean")
        nckd = F.kl_div(non_target_log_probs(s), non_target_log_probs(t), log_target=True, reduction="batchmean")
    else:
        def per_row(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return masked_mean(F.kl_div(p, q, log_target=True, reduction="none").sum(1), labelled)

        tckd = per_row(binary_log_probs(s), binary_log_probs(t))
        nckd = per_row(non_target_log_probs(s), non_target_log_probs(t))
    return tckd * (T * T), nckd * (T * T)


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


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the smaller one's height and width."""
    if a.dim() != 4 or a.shape[2:] == b.shape[2:]:
        return a, b
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def hint_loss(regressed_student: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al. 2015): mean squared error between the regressed student
    features and the teacher's, after pooling the larger map to the smaller size."""
    s, t = match_spatial(regressed_student, teacher_features)
    return F.mse_loss(s, t)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention (Zagoruyko & Komodakis 2017): mean over channels of the squared
    activations, flattened and L2-normalised: (B, C, H, W) -> (B, H*W)."""
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def at_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """Attention transfer: sum over stage pairs of the mean squared difference of the
    attention maps; the larger map is pooled to the smaller size first (as RepDistiller)."""
    total = 0.0
    for s, t in zip(student_features, teacher_features, strict=True):
        s, t = match_spatial(s, t)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total
