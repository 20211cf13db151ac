"""Neuron selectivity transfer (Huang & Wang, 2017): each channel's spatial activation pattern is a
sample; the student's distribution of them matches the teacher's by maximum mean discrepancy.

Reference: RepDistiller (distiller_zoo/NST.py), CIFAR-100 row `-r 1 -a 0 -b 50`: every stage pair of
`feat[1:-1]` (here, as `at`: the last stages of both models paired from the end, all three for the zoo's
CIFAR ResNets), the larger map average-pooled to the smaller, each channel's H*W activations
L2-normalised, the squared MMD under the polynomial kernel k(x, y) = (x . y)^2 (degree 2, c = 0, the
paper's best): mean k(t, t) + mean k(s, s) - 2 mean k(s, t), summed over pairs. The channel counts may
differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm
from kdrun.methods.terms.feature.stages import match_spatial


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """(B, Ca, N), (B, Cb, N) -> (B, Ca, Cb): (a_i . b_j)^2."""
    return (a @ b.transpose(1, 2)).pow(2)


def nst_loss(student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
    total = 0.0
    for s, t in zip(student_features, teacher_features, strict=True):
        s, t = match_spatial(s, t)
        s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)
        total = total + (polynomial_kernel(t, t).mean().detach() + polynomial_kernel(s, s).mean()
                         - 2 * polynomial_kernel(s, t).mean())
    return total


@register_term
class NeuronSelectivity(StagePairsTerm):
    name = "nst"
    needs_maps = "neuron selectivity transfer"

    @dataclass
    class Config(StagePairsKeys):
        weight: float = key(default=50.0, low=0)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(nst_loss(*self.read(inputs)))
