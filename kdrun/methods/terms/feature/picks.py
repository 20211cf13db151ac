"""The two ways a feature term chooses what it reads, shared by the terms: one stage (or layer) of each
model, or pairs of them; and the embedding a relation term compares samples by.

One stage: `student_stage` / `teacher_stage` (default the last), or by module path `student_layer` /
`teacher_layer`. Pairs: `student_stages` / `teacher_stages` lists, or `student_layers` / `teacher_layers`;
all null pairs the last stages of each model from the end, as many as the shallower has (for the zoo's
CIFAR ResNets, every stage: RepDistiller's `feat[1:-1]`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import FeatureTerm, TermInputs
from kdrun.methods.terms.feature.stages import FeatureContext, Ref, Shape, describe

SIDES = ("student", "teacher")


def embedding(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C) by global average pooling; a (B, C) vector stays as it is. The last stage
    pooled is the zoo's penultimate embedding (what its classifiers read; RepDistiller's `feat[-1]`)."""
    return F.adaptive_avg_pool2d(features, 1).flatten(1) if features.dim() == 4 else features.flatten(1)


def embedding_size(shape: Shape) -> int:
    """The length of `embedding` for one sample of this shape: a map's channels, else every value."""
    return shape[0] if len(shape) == 3 else math.prod(shape)


def pick_one(term: str, config, context: FeatureContext) -> tuple[tuple[Ref, Ref], tuple[Shape, Shape]]:
    """(student ref, teacher ref), (their shapes) from the term's student_/teacher_ stage or layer keys."""
    picked = [context.pick(side, term, getattr(config, f"{side}_stage"), getattr(config, f"{side}_layer"),
                           f"{side}_stage") for side in SIDES]
    return (picked[0][0], picked[1][0]), (picked[0][1], picked[1][1])


def pick_pairs(term: str, config, context: FeatureContext, needs_maps: str | None = None
               ) -> tuple[tuple[tuple[Ref, Ref], ...], tuple[tuple[Shape, Shape], ...]]:
    """Pairs of (student ref, teacher ref) and their shapes from the term's list keys. `needs_maps` names
    the method for the message when both sides must be spatial feature maps."""
    by_name = config.student_layers is not None or config.teacher_layers is not None
    s_list, t_list = ((config.student_layers, config.teacher_layers) if by_name
                      else (config.student_stages, config.teacher_stages))
    if not by_name and s_list is None and t_list is None:  # the last stages of both, paired from the end
        k = min(len(context.stages("student")), len(context.stages("teacher")))
        s_list, t_list = list(range(-k, 0)), list(range(-k, 0))
    what = "layers" if by_name else "stages"
    if s_list is None or t_list is None or len(s_list) != len(t_list) or not len(s_list):
        raise ConfigError(f"loss.terms.{term}.student_{what}={s_list} and loss.terms.{term}.teacher_{what}="
                          f"{t_list} must be two lists of the same, non-zero length (pairs), or all null to pair "
                          f"the last stages of each model")
    refs, shapes = [], []
    for s, t in zip(s_list, t_list):
        picked = [context.pick(side, term, None if by_name else ref, ref if by_name else None, f"{side}_{what}")
                  for side, ref in zip(SIDES, (s, t))]
        if needs_maps:
            for side, (ref, shape) in zip(SIDES, picked):
                if len(shape) != 3:
                    raise ConfigError(f"{needs_maps} needs spatial feature maps, but {context.arch(side)} {ref!r} "
                                      f"outputs {describe(shape)}; choose other stages or layers")
        refs.append((picked[0][0], picked[1][0]))
        shapes.append((picked[0][1], picked[1][1]))
    return tuple(refs), tuple(shapes)


def layers_of(pairs) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The named layers among (student ref, teacher ref) pairs: what FeatureTerms must tap on each model."""
    return (tuple(dict.fromkeys(s for s, _ in pairs if isinstance(s, str))),
            tuple(dict.fromkeys(t for _, t in pairs if isinstance(t, str))))


# ---- the two shapes of feature term: the keys each declares, and what it reads for a batch


@dataclass
class OneStageKeys:
    """A term's Config base: its weight (a term redefines it with its default) and the one stage or layer of
    each model it reads."""

    weight: float = key(default=1.0, low=0)
    student_stage: int = key(default=-1, doc="the student stage read (negative: from the end)")
    teacher_stage: int = key(default=-1)
    student_layer: str | None = key(doc="a layer by module path instead of a stage, e.g. layer4")
    teacher_layer: str | None = key()


@dataclass
class StagePairsKeys:
    """A term's Config base: its weight and the pairs of stages or layers it reads."""

    weight: float = key(default=1.0, low=0)
    student_stages: list[int] | None = key(doc="paired with teacher_stages; both null = the last stages of each")
    teacher_stages: list[int] | None = key()
    student_layers: list[str] | None = key(doc="layers by module path instead, paired with teacher_layers")
    teacher_layers: list[str] | None = key()


class OneStageTerm(FeatureTerm):
    """A feature term that reads one stage or layer of each model: `refs` (student's, teacher's), built from
    OneStageKeys. A subclass that sizes parts from the outputs' shapes takes them in its __init__."""

    def __init__(self, config, refs: tuple[Ref, Ref], shapes: tuple[Shape, Shape] | None = None):
        super().__init__(config)
        self.refs = refs

    @classmethod
    def build(cls, config, context: FeatureContext) -> "OneStageTerm":
        return cls(config, *pick_one(cls.name, config, context))

    def layer_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return layers_of([self.refs])

    def read(self, inputs: TermInputs) -> tuple[Tensor, Tensor]:
        """(the student's output, the teacher's output) for this batch."""
        s, t = self.refs
        return inputs.features[s], inputs.teacher_features[t]


class StagePairsTerm(FeatureTerm):
    """A feature term that reads pairs of stages or layers: `pairs`, (student ref, teacher ref) each, built
    from StagePairsKeys. `needs_maps` names the method in the message where both sides must be feature maps."""

    needs_maps: ClassVar[str | None] = None

    def __init__(self, config, pairs: tuple[tuple[Ref, Ref], ...],
                 shapes: tuple[tuple[Shape, Shape], ...] | None = None):
        super().__init__(config)
        self.pairs = pairs

    @classmethod
    def build(cls, config, context: FeatureContext) -> "StagePairsTerm":
        return cls(config, *pick_pairs(cls.name, config, context, needs_maps=cls.needs_maps))

    def layer_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return layers_of(self.pairs)

    def read(self, inputs: TermInputs) -> tuple[list[Tensor], list[Tensor]]:
        """(the student's outputs, the teacher's outputs), pair by pair, for this batch."""
        return [inputs.features[s] for s, _ in self.pairs], [inputs.teacher_features[t] for _, t in self.pairs]
