"""Flow of solution procedure (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation"); reference:
HobbitLong/RepDistiller (distiller_zoo/FSP.py and the `init` stage of train_student.py).

The FSP matrix of two consecutive stages (bottom, top) is G[i, j] = mean over positions of top_i * bottom_j
(the larger map average-pooled to the smaller's size first); the loss is the mean squared difference of the
student's and the teacher's matrices, summed over consecutive pairs. The paired stages must have equal
channel counts in both models (no regressor, as the reference asserts).

As RepDistiller, FSP is an initialisation stage: for `init_epochs` epochs (its default 30) the student's
feature layers train on the FSP loss alone; then the main training, where RepDistiller's loop adds nothing of
FSP (its `loss_kd = 0`; the `-b 50` of its scripts is unused), so our `weight`, the main stage's, is 0 by
default. Differences: the reference includes the stem's output in the stage list (feat[:-1]); we pair the
models' stages (the stem is no stage here; name its layer to include it). The init epochs are the run's first
`init_epochs` of `epochs`, with the run's optimiser and schedule (RepDistiller: its own SGD, lr 0.05, before
the 240 main epochs): set epochs=270 init_epochs=30 for its length.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import StagePairsKeys, StagePairsTerm, pick_pairs
from kdrun.methods.terms.feature.stages import FeatureContext, match_spatial


def fsp_matrices(maps: list[Tensor]) -> list[Tensor]:
    """(B, C_top, C_bottom) per consecutive pair of maps."""
    out = []
    for bottom, top in zip(maps, maps[1:]):
        bottom, top = match_spatial(bottom, top)
        out.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / bottom[0, 0].numel())
    return out


def fsp_loss(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    return sum((s - t).pow(2).mean() for s, t in zip(fsp_matrices(student_maps), fsp_matrices(teacher_maps)))


@register_term
class FSP(StagePairsTerm):
    name = "fsp"
    has_init_stage = True
    needs_maps = "loss.terms.fsp"

    @dataclass
    class Config(StagePairsKeys):
        weight: float = key(default=0.0, low=0, doc="the main stage's weight (RepDistiller: none after init)")
        init_epochs: int = key(default=30, low=0, doc="the first epochs train the student's layers on FSP alone")

    @classmethod
    def build(cls, config, context: FeatureContext) -> "FSP":
        refs, shapes = pick_pairs(cls.name, config, context, needs_maps=cls.needs_maps)
        if len(refs) < 2:
            raise ConfigError("loss.terms.fsp needs at least two stage pairs (an FSP matrix joins two consecutive "
                              "stages); list two or more in student_stages / teacher_stages")
        for (s_ref, t_ref), (s_shape, t_shape) in zip(refs, shapes):
            if s_shape[0] != t_shape[0]:
                raise ConfigError(f"loss.terms.fsp pairs student {context.student_arch} {s_ref!r} ({s_shape[0]} "
                                  f"channels) with teacher {context.teacher_arch} {t_ref!r} ({t_shape[0]} channels): "
                                  f"FSP matrices compare only equal channel counts; choose other student_stages / "
                                  f"teacher_stages")
        return cls(config, refs)

    def loss(self, inputs: TermInputs) -> Tensor:
        return fsp_loss(*self.read(inputs))

    def init_loss(self, inputs: TermInputs) -> dict[str, Tensor]:
        return {f"{self.name}_init": self.loss(inputs)}

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(self.loss(inputs)) if self.weight else {}
