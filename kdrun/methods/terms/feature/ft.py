"""Factor transfer (Kim et al., NeurIPS 2018, "Paraphrasing Complex Network"); reference:
HobbitLong/RepDistiller (distiller_zoo/FT.py, models/util.py Paraphraser/Translator, the `init` stage).

A paraphraser (three 3x3 convs with LeakyReLU(0.1) down to rate x the teacher's channels, three transposed
convs back) is first trained to reconstruct the teacher's last stage (MSE) for `init_epochs` epochs (30),
alone. Then a translator (three 3x3 convs with BN and LeakyReLU, student's channels to the factor's) trains
with the student; the loss compares the factors as RepDistiller does: each factor map f becomes
normalize(mean over channels of f^p1) per sample, and the term is the mean |difference| (p2 = 1) or mean
difference^p2, the larger map average-pooled to the smaller first. The paraphraser stays frozen after its
stage (the teacher's factor is computed without gradient).

RepDistiller's row: -r 1 -a 0 -b 200, rate 0.5, p1 2, p2 1, on the last stage (feat[-2]). Its init stage
(helper/pretrain.py) trains the paraphraser by SGD at lr 0.01 for the CIFAR ResNet/WRN students (the run's
lr for the others): `init_lr`, 0.01 in conf/loss/ft.yaml, is that lr, as the paraphraser's own optimiser
group (it has no gradient after its stage). At the run's lr 0.05 the unnormalised MSE diverges within ten
steps even on a trained teacher's scale of features, which is why the reference lowers it. Differences: the
init epochs are the run's first `init_epochs` of `epochs` with the run's optimiser and schedule (RepDistiller:
30 epochs of their own, then 240 main epochs; set epochs=270 for its length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm, pick_one
from kdrun.methods.terms.feature.stages import FeatureContext, describe, match_spatial


def conv_stack(channels: list[int], transposed: bool = False, bn: bool = False) -> nn.Sequential:
    layers = []
    for c_in, c_out in zip(channels, channels[1:]):
        layers.append((nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, 3, 1, 1))
        layers += [nn.BatchNorm2d(c_out)] if bn else []
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def factor_map(f: Tensor, p1: float) -> Tensor:
    return F.normalize(f.pow(p1).mean(1).flatten(1))


def ft_loss(factor_s: Tensor, factor_t: Tensor, p1: float, p2: float) -> Tensor:
    factor_s, factor_t = match_spatial(factor_s, factor_t)
    diff = factor_map(factor_s, p1) - factor_map(factor_t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


@register_term
class FactorTransfer(OneStageTerm):
    name = "ft"
    has_init_stage = True

    @dataclass
    class Config(OneStageKeys):
        weight: float = key(default=200.0, low=0)
        init_epochs: int = key(default=30, low=0, doc="the first epochs train the paraphraser alone")
        init_lr: float | None = key(low=0, strict=True, doc="the paraphraser's lr in its stage (null: optim.lr)")
        rate: float = key(default=0.5, low=0, strict=True, doc="the factor's channels per teacher channel")
        p1: float = key(default=2.0, low=0, strict=True, doc="the power of the factor map")
        p2: float = key(default=1.0, low=0, strict=True, doc="1: mean |difference|; else mean difference^p2")

    def __init__(self, config, refs, shapes):
        super().__init__(config, refs)
        s_channels, t_channels = shapes[0][0], shapes[1][0]
        factor = max(1, int(t_channels * config.rate))
        self.paraphraser_encoder = conv_stack([t_channels, t_channels, factor, factor])
        self.paraphraser_decoder = conv_stack([factor, factor, t_channels, t_channels], transposed=True)
        self.translator = conv_stack([s_channels, s_channels, factor, factor], bn=True)

    @classmethod
    def build(cls, config, context: FeatureContext) -> "FactorTransfer":
        refs, shapes = pick_one(cls.name, config, context)
        for side, ref, shape in zip(("student", "teacher"), refs, shapes):
            if len(shape) != 3:
                raise ConfigError(f"loss.terms.ft needs a spatial feature map, but {context.arch(side)} {ref!r} "
                                  f"outputs {describe(shape)}; choose another {side}_stage / {side}_layer")
        return cls(config, refs, shapes)

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        if self.config.init_lr is None:
            return []
        return [([*self.paraphraser_encoder.parameters(), *self.paraphraser_decoder.parameters()],
                 float(self.config.init_lr))]

    def init_loss(self, inputs: TermInputs) -> dict[str, Tensor]:
        t = self.read(inputs)[1]
        return {f"{self.name}_init": F.mse_loss(self.paraphraser_decoder(self.paraphraser_encoder(t)), t)}

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        s, t = self.read(inputs)
        with torch.no_grad():  # the paraphraser trained in its stage; now it only reads the teacher
            factor_t = self.paraphraser_encoder(t)
        factor_s = self.translator(s)
        return self.weighted(ft_loss(factor_s, factor_t, self.config.p1, self.config.p2))
