"""Curriculum temperature KD (Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023),
reference zhengli97/CTKD (models/temp_global.py, train_student.py, helper/loops.py): vanilla KD whose
temperature is learnt adversarially. The global version, the reference's `--mlp_name global`:

    T      = T_min + T_span * sigmoid(theta)           theta: one trainable number, initially 1
    ctkd   = weight * T^2 * KL(softmax(t/T) || softmax(s/T))
    theta's gradient is multiplied by -lambda (a gradient reversal): the student descends the loss,
    the temperature ascends it, as hard as lambda allows
    lambda = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * min(epoch, lambda_epochs) / lambda_epochs)) / 2

The reference's names: --t_start is our T_min, --t_end our T_span (it is added to t_start, so T lies in
(1, 21) with its defaults), --decay_loops our lambda_epochs; its --decay_max 0 / --decay_min -1 are the
signed factor the reversal multiplies by, -lambda_min / -lambda_max here. -a is our weight (0.9, with
-r 0.1 as ce). theta trains with the student's optimiser (weight decay included), as there.

theta is the term's trainable part: strategy=kd (and born_again, whose generations are kd fits) optimises
it, keeps it in last.pt for resume, and never saves it with the student; the other strategies do not
train a term's parameters, so ctkd refuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term
from kdrun.methods.terms.logit.kd import kd_loss


# The strategies whose fits optimise a logit term's parameters and keep them in last.pt (KD.parts).
TRAINS_TERM_PARAMETERS = ("kd", "born_again")


class ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by -scale."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


@register_term
class CTKD(LogitTerm):
    name = "ctkd"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="the KD term at the learnt temperature (the reference's -a)")
        T_min: float = key(default=1.0, low=0, strict=True, doc="the lowest temperature (--t_start)")
        T_span: float = key(default=20.0, low=0, strict=True, doc="how far above T_min it may go (--t_end)")
        init: float = key(default=1.0, doc="theta's starting value: T = T_min + T_span * sigmoid(init)")
        lambda_min: float = key(default=0.0, low=0, doc="the reversal's strength at epoch 0 (-decay_max)")
        lambda_max: float = key(default=1.0, low=0, doc="its strength from lambda_epochs on (-decay_min)")
        lambda_epochs: int = key(default=10, low=1, doc="epochs of the cosine curriculum (--decay_loops)")

    def __init__(self, config):
        super().__init__(config)
        self.theta = nn.Parameter(torch.tensor(float(config.init)))

    @classmethod
    def validate(cls, config, cfg) -> None:
        strategy = cfg.get("strategy", {}).get("name")
        if strategy is not None and strategy not in TRAINS_TERM_PARAMETERS:
            raise ConfigError(f"loss.terms.ctkd learns its temperature, a trainable part that only strategy=kd "
                              f"(or born_again, each generation a kd fit) trains; strategy={strategy} would "
                              f"leave it fixed. Use strategy=kd, or loss=kd for a fixed temperature")
        if config.lambda_max < config.lambda_min:
            raise ConfigError(f"loss.terms.ctkd.lambda_max ({config.lambda_max}) must be at least "
                              f"loss.terms.ctkd.lambda_min ({config.lambda_min}): the curriculum only strengthens")

    def curriculum(self, epoch: int) -> float:
        """lambda at a 1-based epoch: the reference's CosineDecay, sign turned."""
        c = self.config
        progress = min(max(epoch, 0), c.lambda_epochs) / c.lambda_epochs
        return c.lambda_min + (c.lambda_max - c.lambda_min) * (1 - math.cos(math.pi * progress)) / 2

    def learnt_temperature(self, theta: Tensor) -> Tensor:
        return self.config.T_min + self.config.T_span * torch.sigmoid(theta)

    def temperature(self) -> float:
        """The temperature now (what a teacher-output cache is built at; it moves as the run trains)."""
        return float(self.learnt_temperature(self.theta.detach()))

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        T = self.learnt_temperature(ReverseGradient.apply(self.theta, self.curriculum(inputs.epoch)))
        return self.weighted(kd_loss(inputs.logits, inputs.teacher_logits, T))
