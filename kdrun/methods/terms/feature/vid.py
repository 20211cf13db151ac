"""Variational information distillation (Ahn et al., CVPR 2019): the student's stage predicts the
teacher's through a Gaussian with a learned mean (a small regressor) and a learned per-channel variance;
the term is the negative log-likelihood, a lower bound on their mutual information.

Reference: RepDistiller (distiller_zoo/VID.py, the authors' code), CIFAR-100 row `-r 1 -a 0 -b 1`: every
stage pair of `feat[1:-1]` (here, as `at`: the last stages of both models paired from the end), the larger
map average-pooled to the smaller; per pair a regressor of three bias-free 1x1 convolutions (student
channels -> teacher channels -> teacher channels -> teacher channels, ReLU between) and a variance
softplus(alpha_c) + eps per teacher channel, alpha initialised so the variance starts at 5 (eps 1e-5);
the term is the mean of 0.5 ((mu - t)^2 / var + log var), summed over pairs (the constant 0.5 log 2 pi
left out, as the reference). A vector stage (or any non-map layer) reads as a 1x1 map of all its values, so MLP stages work too. The regressors
and variances train with the student, are kept in last.pt for resume, and are never saved with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm, embedding_size
from kdrun.methods.terms.feature.stages import match_spatial

EPS = 1e-5  # the reference's floor on the variance


def as_map(x: Tensor) -> Tensor:
    """A feature map as it is; anything else (a vector, tokens) as a 1x1 map of all its values."""
    return x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)


class GaussianPredictor(nn.Module):
    """The mean (a 1x1-convolution regressor) and per-channel variance of q(teacher | student)."""

    def __init__(self, in_channels: int, out_channels: int, init_variance: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False))
        # softplus^-1(init - eps): the variance starts at init_variance
        self.alpha = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_variance - EPS))))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + EPS

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Mean negative log-likelihood (without 0.5 log 2 pi) of the teacher's features."""
        student, teacher = match_spatial(as_map(student), as_map(teacher))
        variance = self.variance().view(1, -1, 1, 1)
        return (0.5 * ((self.mean(student) - teacher).pow(2) / variance + variance.log())).mean()


@register_term
class VariationalInformation(StagePairsTerm):
    name = "vid"

    @dataclass
    class Config(StagePairsKeys):
        init_variance: float = key(default=5.0, low=EPS, strict=True, doc="each channel's variance at the start")

    def __init__(self, config, pairs, shapes):
        super().__init__(config, pairs)
        self.predictors = nn.ModuleList(GaussianPredictor(embedding_size(s), embedding_size(t), config.init_variance) for s, t in shapes)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        total = sum(predict(s, t) for predict, s, t in zip(self.predictors, *self.read(inputs)))
        return self.weighted(total)
