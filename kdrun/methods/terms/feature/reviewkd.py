"""Knowledge review (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review"); reference:
megvii-research/mdistiller (distillers/ReviewKD.py), after dvlab-research/ReviewKD.

The student's stages, deepest first, plus its last stage average-pooled to 1x1, pass through attention-based
fusion (ABF) modules: each maps its level to `mid` channels (1x1 conv + BN), fuses it with the deeper level's
result (nearest-upsampled; a 1x1 conv + sigmoid gives the two weights per position), resizes to the teacher's
level (nearest) and outputs the teacher's channels (3x3 conv + BN). The hierarchical context loss (HCL)
compares each output with the teacher's level: the MSE, plus the MSEs of both pooled to 4x4, 2x2 and 1x1 (those
smaller than the map) weighted 1/2, 1/4, 1/8, divided by the weights' sum; levels summed. The loss ramps in
linearly over `warmup_epochs` (min(epoch / warmup, 1)).

mdistiller's defaults: REVIEWKD_WEIGHT 1.0, CE_WEIGHT 1.0, WARMUP_EPOCHS 20, mid = min(512, the student's
last channels). Differences on purpose: the levels are the last stages of both models paired from the end
(mdistiller lists the channels and sizes by hand per pair); the teacher's stage outputs are what our models
return (post-ReLU for the ResNets, as mdistiller's student side; mdistiller reads the teacher pre-ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm

HCL_LEVELS = (4, 2, 1)


def hcl_loss(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
    """The hierarchical context loss, summed over levels."""
    total = 0.0
    for s, t in zip(students, teachers, strict=True):
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for size in HCL_LEVELS:
            if size < s.shape[2]:
                weight /= 2
                loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
                weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """One attention-based fusion: a student level (and the deeper level's fused map) -> a teacher level."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.out = nn.Sequential(nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)  # the reference's initialisation
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(the output at the teacher's size, the fused map passed to the next shallower level)."""
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, x.shape[2:], mode="nearest")
            z = self.attention(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.out(x), x


def review(abfs: nn.ModuleList, levels: list[Tensor], out_sizes: list[tuple[int, int]]) -> list[Tensor]:
    """The ABF outputs, shallowest first; `abfs`, `levels` and `out_sizes` are deepest first."""
    outputs, fused = [], None
    for abf, x, size in zip(abfs, levels, out_sizes, strict=True):
        out, fused = abf(x, fused, size)
        outputs.insert(0, out)
    return outputs


def with_pooled(maps: list[Tensor]) -> list[Tensor]:
    """The stage maps, deepest first, led by the deepest average-pooled to 1x1."""
    return [F.adaptive_avg_pool2d(maps[-1], 1), *maps[::-1]]


@register_term
class ReviewKD(StagePairsTerm):
    name = "reviewkd"
    needs_maps = "loss.terms.reviewkd"

    @dataclass
    class Config(StagePairsKeys):
        warmup_epochs: int = key(default=20, low=0, doc="epochs over which the weight ramps in linearly")
        max_mid_channels: int = key(default=512, low=1, doc="the fusion width: min(this, the student's last channels)")

    def __init__(self, config, pairs, shapes):
        super().__init__(config, pairs)
        s_shapes = [shapes[-1][0], *(s for s, _ in shapes[::-1])]  # deepest first, pooled level leading
        t_shapes = [shapes[-1][1], *(t for _, t in shapes[::-1])]
        self.out_sizes = [(1, 1), *((t[1], t[2]) for t in t_shapes[1:])]
        mid = min(config.max_mid_channels, s_shapes[0][0])
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i > 0) for i, (s, t) in enumerate(zip(s_shapes, t_shapes)))

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        students, teachers = self.read(inputs)
        students = review(self.abfs, with_pooled(students), self.out_sizes)
        teachers = with_pooled(teachers)[::-1]
        ramp = min(inputs.epoch / self.config.warmup_epochs, 1.0) if self.config.warmup_epochs else 1.0
        return self.weighted(ramp * hcl_loss(students, teachers))
