"""FitNets hints (Romero et al. 2015): a regressed student stage matches a teacher stage by MSE.

RepDistiller's and mdistiller's FitNets row: weight 100 on CIFAR's middle stage (their HINT_LAYER 2 is
our stage 1), a 1x1-conv + BatchNorm regressor (ConvReg). Stages of different height and width are
matched by average-pooling the larger map to the smaller size.

`init_epochs` > 0 gives FitNets' own two stages (Romero et al.'s "hint-based training", then KD): the run's
first init_epochs epochs train the regressor and the student's layers below the hint on the hint loss alone,
e.g. `loss=kd loss.terms.hint.init_epochs=5 loss.terms.hint.weight=0` for "hint stage, then kd".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm, pick_one
from kdrun.methods.terms.feature.stages import FeatureContext, Shape, describe, match_spatial


def hint_loss(regressed_student: Tensor, teacher_features: Tensor) -> Tensor:
    """Mean squared error between the regressed student features and the teacher's, after pooling the
    larger map to the smaller size."""
    s, t = match_spatial(regressed_student, teacher_features)
    return F.mse_loss(s, t)


def regressor(in_shape: Shape, out_shape: Shape) -> nn.Module:
    """A 1x1 convolution between feature maps, a linear map between vectors, then BatchNorm, as the
    references' ConvReg; without their ReLU, since some stage outputs here (the CNNs') are pre-activation."""
    if len(in_shape) == 3:
        return nn.Sequential(nn.Conv2d(in_shape[0], out_shape[0], kernel_size=1), nn.BatchNorm2d(out_shape[0]))
    return nn.Sequential(nn.Linear(in_shape[0], out_shape[0]), nn.BatchNorm1d(out_shape[0]))


@register_term
class Hint(OneStageTerm):
    name = "hint"
    has_init_stage = True

    @dataclass
    class Config(OneStageKeys):
        weight: float = key(default=100.0, low=0)
        student_stage: int = key(default=1, doc="the student stage regressed (negative: from the end)")
        teacher_stage: int = key(default=1)
        init_epochs: int = key(default=0, low=0, doc="the first epochs train on the hint alone (FitNets stage 1)")

    def __init__(self, config, refs, shapes):
        super().__init__(config, refs)
        self.regressor = regressor(*shapes)  # trained with the student, never saved with it

    @classmethod
    def build(cls, config, context: FeatureContext) -> "Hint":
        (s_ref, t_ref), (s_shape, t_shape) = pick_one(cls.name, config, context)
        if len(s_shape) != len(t_shape):
            raise ConfigError(
                f"loss.terms.hint cannot match student {context.student_arch} {s_ref!r} ({describe(s_shape)}) to "
                f"teacher {context.teacher_arch} {t_ref!r} ({describe(t_shape)}): a hint needs two feature maps "
                f"or two vectors; choose others with loss.terms.hint.student_stage / teacher_stage, or by name "
                f"with loss.terms.hint.student_layer / teacher_layer")
        return cls(config, (s_ref, t_ref), (s_shape, t_shape))

    def loss(self, inputs: TermInputs) -> Tensor:
        s, t = self.read(inputs)
        return hint_loss(self.regressor(s), t)

    def init_loss(self, inputs: TermInputs) -> dict[str, Tensor]:
        return {f"{self.name}_init": self.loss(inputs)}

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(self.loss(inputs))
