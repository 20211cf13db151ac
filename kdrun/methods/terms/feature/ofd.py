"""Overhaul of feature distillation (Heo et al., ICCV 2019); reference: megvii-research/mdistiller
(distillers/OFD.py), after clovaai/overhaul-distillation.

A student stage passes through a connector (1x1 conv + BN) to the teacher's channels; the teacher's stage is
average-pooled to the student's size. The partial L2 distance skips positions where the student is already
below a negative teacher response: with the margin m (per channel),
    (s - m)^2 [s > m and t <= m] + (s - t)^2 [s > t and m < t <= 0] + (s - t)^2 [t > 0],
averaged over the batch and summed over the rest; stage pairs summed with weights 1/2^(n-1-i) (the deepest 1).
The margin is the expectation of the negative part of a Gaussian whose mean and std are the bias and |weight|
of the BatchNorm before the teacher's ReLU: m = mu - sigma phi(mu/sigma) / Phi(-mu/sigma), or -3 sigma where
Phi(-mu/sigma) <= 0.001.

mdistiller's row: FEAT_WEIGHT 0.001, CE_WEIGHT 1.0, a 1x1 connector, every stage after the stem.

Where we differ, and why: mdistiller reads both models' pre-ReLU stage outputs; our zoo ResNets return their
stages after the ReLU (the models are shared by every term, and the stage list is a model's public contract).
On such a post-ReLU teacher output t >= 0, so the margin's first case never fires and the loss is the partial
L2 of the paper's "t = 0" region: (s - t)^2 where t > 0, plus s^2 where s > 0 = t. Named layers reach pre-ReLU
tensors where a model has them as modules (a block's last BatchNorm, e.g. teacher_layers=[stages.2.0.bn2]).
The margin comes from the last BatchNorm2d inside the teacher's stage (or named layer) with the stage's channel
count outside a shortcut/downsample projection (mdistiller's get_bn_before_relu for CIFAR ResNets); a teacher
stage without one is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm, pick_pairs
from kdrun.methods.terms.feature.stages import FeatureContext, Ref, stage_module
from kdrun.sources.models import build_model


def margin_from_bn(weight: Tensor, bias: Tensor) -> Tensor:
    """Per channel, E[x | x < 0] of N(bias, |weight|^2), or -3|weight| where P(x < 0) <= 0.001."""
    std, mean = weight.abs().double(), bias.double()
    below = torch.special.ndtr(-mean / std)
    expected = mean - std * torch.exp(-(mean / std) ** 2 / 2) / math.sqrt(2 * math.pi) / below
    return torch.where(below > 0.001, expected, -3 * std).float()


def ofd_distance(s: Tensor, t: Tensor, margin: Tensor) -> Tensor:
    """The partial L2 distance, averaged over the batch and summed over the rest; margin (C,)."""
    m = margin.view(1, -1, 1, 1).to(s)
    loss = ((s - m).pow(2) * ((s > m) & (t <= m)) + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0))
            + (s - t).pow(2) * (t > 0))
    return loss.mean(dim=0).sum()


SHORTCUTS = ("shortcut", "downsample")  # our zoo's and torchvision's names for a residual's projection


def bn_before(model: nn.Module, ref: Ref, channels: int) -> nn.BatchNorm2d | None:
    module = stage_module(model, ref)
    # the residual branch's last BatchNorm (bn2 of a CIFAR ResNet's last block), not the shortcut's
    norms = [m for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d) and m.num_features == channels
             and not any(part in name for part in SHORTCUTS)] if module is not None else []
    return norms[-1] if norms else None


@register_term
class OFD(StagePairsTerm):
    name = "ofd"
    needs_maps = "loss.terms.ofd"

    @dataclass
    class Config(StagePairsKeys):
        weight: float = key(default=0.001, low=0)

    def __init__(self, config, pairs, shapes):
        super().__init__(config, pairs)
        self.connectors = nn.ModuleList(connector(s[0], t[0]) for s, t in shapes)
        for i, (_, t) in enumerate(shapes):  # filled from the trained teacher by bind()
            self.register_buffer(f"margin{i}", torch.zeros(t[0]))

    @classmethod
    def build(cls, config, context: FeatureContext) -> "OFD":
        refs, shapes = pick_pairs(cls.name, config, context, needs_maps=cls.needs_maps)
        teacher = build_model(context.teacher_arch, *context.dims)  # the structure only: which BatchNorm
        for (_, ref), (_, shape) in zip(refs, shapes):
            if bn_before(teacher, ref, shape[0]) is None:
                raise ConfigError(f"loss.terms.ofd takes its margin from the BatchNorm before the teacher's ReLU, "
                                  f"but teacher {context.teacher_arch} {ref!r} has no BatchNorm2d with {shape[0]} "
                                  f"channels; choose a teacher with BatchNorm (e.g. resnet8) or other "
                                  f"teacher_stages / teacher_layers")
        return cls(config, refs, shapes)

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        for i, (_, ref) in enumerate(self.pairs):
            margin = getattr(self, f"margin{i}")
            bn = bn_before(teacher, ref, len(margin))
            margin.copy_(margin_from_bn(bn.weight.detach(), bn.bias.detach()))

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        n, total = len(self.pairs), 0.0
        for i, (s, t, conn) in enumerate(zip(*self.read(inputs), self.connectors)):
            source = conn(s)
            target = F.adaptive_avg_pool2d(t, source.shape[2:])
            total = total + ofd_distance(source, target, getattr(self, f"margin{i}")) / 2 ** (n - 1 - i)
        return self.weighted(total)


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    """1x1 conv + BN, initialised as the reference (He normal by fan-out; BN weight 1, bias 0)."""
    conv, bn = nn.Conv2d(s_channels, t_channels, 1, bias=False), nn.BatchNorm2d(t_channels)
    nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / t_channels))
    return nn.Sequential(conv, bn)
