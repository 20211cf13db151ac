"""Activation boundaries (Heo et al., AAAI 2019, "Knowledge Transfer via Distillation of Activation
Boundaries Formed by Hidden Neurons"); reference: HobbitLong/RepDistiller (distiller_zoo/AB.py, the `init`
stage of train_student.py).

A connector (identity where the shapes agree, else 1x1 conv + BN, as the reference's Connector/ConvReg) maps
each student stage to the teacher's; the alternative L2 loss pushes the connected student response s past
a margin mu on the side of the teacher's activation boundary:
    (s + mu)^2 [s > -mu and t <= 0] + (s - mu)^2 [s <= mu and t > 0],
summed over everything, divided by the batch size, times 3/1000, and stage i of n weighted 2^(i - n + 1).

As RepDistiller, AB is an initialisation stage: for `init_epochs` epochs (30) the connectors and the student's
feature layers train on it alone; then the main training, to which RepDistiller's loop adds nothing of AB
(`loss_kd = 0`; the `-b 1` of its scripts is unused): our `weight`, the main stage's, is 0 by default.
Differences: the reference reads pre-ReLU features; only the sign of the teacher's response matters (t > 0),
which a ReLU keeps, so the teacher's post-ReLU stage outputs give the same boundaries; the student's side is
its stage output through the connector. Stages of different size are matched by average-pooling (the
reference's ConvReg uses strided or transposed convolutions). The init epochs are the run's first
`init_epochs` of `epochs`, with the run's optimiser (RepDistiller: SGD at lr 0.05 before 240 main epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.hint import regressor
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm
from kdrun.methods.terms.feature.stages import match_spatial


def alternative_l2(s: Tensor, t: Tensor, margin: float) -> Tensor:
    return ((s + margin).pow(2) * ((s > -margin) & (t <= 0)) + (s - margin).pow(2) * ((s <= margin) & (t > 0))).sum()


def ab_loss(students: list[Tensor], teachers: list[Tensor], margin: float) -> Tensor:
    n, batch = len(students), students[0].shape[0]
    return sum(2.0 ** (i - n + 1) * alternative_l2(*match_spatial(s, t), margin) / batch / 1000 * 3
               for i, (s, t) in enumerate(zip(students, teachers)))


@register_term
class ActivationBoundaries(StagePairsTerm):
    name = "ab"
    has_init_stage = True
    needs_maps = "loss.terms.ab"

    @dataclass
    class Config(StagePairsKeys):
        weight: float = key(default=0.0, low=0, doc="the main stage's weight (RepDistiller: none after init)")
        init_epochs: int = key(default=30, low=0, doc="the first epochs train the connectors and the student's "
                                                      "layers on AB alone")
        margin: float = key(default=1.0, low=0, doc="how far past the boundary the student is pushed")

    def __init__(self, config, pairs, shapes):
        super().__init__(config, pairs)
        self.connectors = nn.ModuleList(nn.Identity() if s == t else regressor(s, t) for s, t in shapes)

    def loss(self, inputs: TermInputs) -> Tensor:
        students, teachers = self.read(inputs)
        return ab_loss([c(s) for c, s in zip(self.connectors, students)], teachers, self.config.margin)

    def init_loss(self, inputs: TermInputs) -> dict[str, Tensor]:
        return {f"{self.name}_init": self.loss(inputs)}

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(self.loss(inputs)) if self.weight else {}
