"""KD-SVD (Lee et al., ECCV 2018, "Self-supervised knowledge distillation using singular value
decomposition"): the leading singular vectors of consecutive stages, related by a Gaussian kernel, the
student's matching the teacher's.

Reference: mdistiller (megvii-research/mdistiller, mdistiller/distillers/KDSVD.py), CIFAR-100 config
KDSVD.K 1, LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 1 (ours: `k`, `loss.terms.ce.weight`, `weight`), on every
stage after the stem (`feats[1:]`; here, as `at`: the last stages of both models paired from the end).
As mdistiller: a (B, C, H, W) map is read as B matrices of (C*H) x W (its reshape of the NCHW tensor;
the same reshape of the original TensorFlow code's NHWC tensors would read (H*W) x C); the teacher's k right singular vectors and the
student's k+3, each L2-normalised, singular values L2-normalised over the first k; each teacher vector
picks the student vector of largest |cosine| with its sign; both are scaled by the teacher's singular
values; for each stage after the first, exp(-(v_i - v_i-1)^2 / 8) between every pair of entries of this
and the previous stage's vectors, and the term is sum((K_s - K_t)^2) / B, non-finite values counted as 0.
We differ on purpose in three places: two maps of different height and width are average-pooled to the
smaller first (mdistiller's would fail on a mismatch of widths); the SVD runs at the input's precision,
at least float32 (mdistiller casts to float32); and its backward is stable_svd's, equal to torch's where
the singular values are distinct and finite where they repeat. torch's divides 0 by 0 there, and
Fashion-MNIST's black borders give resnet8's first stage zero columns, so two or more zero singular values:
with torch's backward the first step's gradients were NaN at a finite loss, the weights turned NaN and
the next step's SVD raised (mdistiller's removenan cleans the forward's outputs, not the gradients). The value depends on the signs the SVD gives its singular
vectors (the kernel compares entries across stages), and those can differ between float32 and float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm
from kdrun.methods.terms.feature.stable_svd import singular_sv
from kdrun.methods.terms.feature.stages import FeatureContext, match_spatial


def finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def leading_singular(features: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> right singular vectors (B, W, <=n), each L2-normalised, and the first <=n singular
    values, L2-normalised, of each sample's (C*H) x W matrix."""
    b, c, h, w = features.shape
    matrices = features.reshape(b, c * h, w)  # half precision has no SVD: at least float32, as mdistiller
    s, v = singular_sv(matrices.to(torch.promote_types(matrices.dtype, torch.float32)))
    v = finite(v)
    return F.normalize(v[:, :, :n], dim=1), F.normalize(finite(s)[:, :n], dim=1)


def align(student_v: Tensor, teacher_v: Tensor) -> Tensor:
    """For each teacher vector, the student vector of largest |cosine|, times the cosine's sign."""
    cosine = student_v.transpose(1, 2) @ teacher_v  # (B, ks, kt)
    best = cosine.abs() == cosine.abs().max(dim=1, keepdim=True).values
    return student_v @ torch.where(best, cosine.sign(), torch.zeros_like(cosine))


def kdsvd_loss(student_features: list[Tensor], teacher_features: list[Tensor], k: int) -> Tensor:
    total, previous = 0.0, None
    for s, t in zip(student_features, teacher_features, strict=True):
        s, t = match_spatial(s, t)
        v_t, s_t = leading_singular(t, k)
        v_s = align(leading_singular(s, k + 3)[0], v_t)
        scale = s_t.unsqueeze(1)
        v_s, v_t = v_s * scale, v_t * scale
        if previous is not None:
            k_s = torch.exp(-(v_s.unsqueeze(2) - previous[0].unsqueeze(1)).pow(2) / 8)
            k_t = torch.exp(-(v_t.unsqueeze(2) - previous[1].unsqueeze(1)).pow(2) / 8)
            total = total + finite((k_s - k_t.detach()).pow(2)).sum()
        previous = v_s, v_t
    return total / student_features[0].shape[0]


@register_term
class SingularVectors(StagePairsTerm):
    name = "kdsvd"
    needs_maps = "kdsvd"

    @dataclass
    class Config(StagePairsKeys):
        k: int = key(default=1, low=1, doc="the teacher's singular vectors used (the student's: k + 3)")

    @classmethod
    def build(cls, config, context: FeatureContext) -> "SingularVectors":
        term = super().build(config, context)
        pairs = term.pairs
        if len(pairs) < 2:  # it relates each stage to the one before: one pair gives nothing to learn from
            raise ConfigError(f"loss.terms.kdsvd relates consecutive stages and needs at least 2 stage pairs, got "
                              f"{len(pairs)}; list more in loss.terms.kdsvd.student_stages / teacher_stages (or "
                              f"_layers), or leave them null for the last stages of each model")
        return term

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(kdsvd_loss(*self.read(inputs), self.config.k))
