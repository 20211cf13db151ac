"""Attention transfer (Zagoruyko & Komodakis 2017): stage pairs compare their spatial attention maps.

RepDistiller's AT row (-b 1000) and mdistiller's AT (FEAT_WEIGHT 1000, p=2): the map is the channel
mean of the squared activations, flattened and L2-normalised; the term is the mean squared difference,
summed over stage pairs. The weight keeps its CIFAR meaning on smaller images (kdrun/methods/terms/feature/scale.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
import torch.nn.functional as F

from kdrun.methods.terms.feature.scale import scaled_at_weight
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm
from kdrun.methods.terms.feature.stages import FeatureContext, match_spatial


def attention_map(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of the squared activations, L2-normalised."""
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def at_loss(student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
    """Sum over stage pairs of the mean squared difference of the attention maps; the larger map is
    pooled to the smaller size first (as RepDistiller)."""
    total = 0.0
    for s, t in zip(student_features, teacher_features, strict=True):
        s, t = match_spatial(s, t)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return total


@register_term
class AttentionTransfer(StagePairsTerm):
    name = "at"
    needs_maps = "attention transfer"

    @dataclass
    class Config(StagePairsKeys):
        weight: float = key(default=1000.0, low=0)

    @classmethod
    def build(cls, config, context: FeatureContext) -> "AttentionTransfer":
        term = super().build(config, context)
        term.weight = scaled_at_weight(config.weight, context.image_size)
        return term

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(at_loss(*self.read(inputs)))
