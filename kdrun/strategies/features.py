"""Feature terms between chosen student and teacher stages: FitNets hints and attention transfer.

Stage choices are checked against both architectures before any teacher is
trained. Where the two stages differ in height and width, the larger map is
average-pooled to the smaller size (as RepDistiller's attention transfer does),
so any CIFAR-ResNet pair can be matched; a feature map cannot be matched to a
vector (an MLP stage), and that is a ConfigError naming both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.feature_scale import scaled_at_weight
from kdrun.losses import at_loss, hint_loss
from kdrun.models import build_model
from kdrun.models.layers import LayerTap, feature_root
from kdrun.strategies.named_layers import named_layer_plan

Shape = tuple[int, ...]  # one sample's stage output: (C, H, W) or (C,)


@lru_cache(maxsize=None)
def stage_shapes(arch: str, in_channels: int, image_size: int, num_classes: int) -> tuple[Shape, ...]:
    """Each stage's output shape, from one forward pass of an untrained model on the CPU."""
    model = build_model(arch, in_channels, image_size, num_classes).eval()
    with torch.no_grad():
        features, _ = model.forward_features(torch.zeros(1, in_channels, image_size, image_size))
    return tuple(tuple(f.shape[1:]) for f in features)


def describe(shape: Shape) -> str:
    return f"a {shape[0]}-vector" if len(shape) == 1 else f"a {'x'.join(map(str, shape))} (CxHxW) feature map"


def pick_stage(index: int, shapes: tuple[Shape, ...], key: str, arch: str) -> int:
    """A stage index (negative counts from the end), or a ConfigError naming the allowed range."""
    n = len(shapes)
    if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
        if not n:
            raise ConfigError(f"{key}={index!r}, but {arch} has no named stages; pick its layers by name "
                              f"(loss.hint_student_layer=..., loss.at_student_layers=[...]; `kdrun-layers` lists them)")
        raise ConfigError(f"{key}={index!r}, but {arch} has {n} stages; allowed: {-n}..{n - 1} "
                          f"(negative counts from the end)")
    return index % n


@dataclass(frozen=True)
class FeatureTerms:
    """Which stages the hint and attention terms compare, with their weights."""

    hint_weight: float
    hint_stages: tuple[int, int]  # (student, teacher); unused when hint_weight is 0
    hint_shapes: tuple[Shape, Shape]
    at_weight: float
    at_stages: tuple[tuple[int, int], ...]  # (student, teacher) pairs
    student_layers: tuple[str, ...] = ()  # layers by module name, stages len(stages).. of the student
    teacher_layers: tuple[str, ...] = ()


def plan_feature_terms(loss_cfg, student_arch: str, teacher_arch: str, data) -> FeatureTerms | None:
    """Check loss.hint_* and loss.at_* against both architectures; None when both weights are 0.

    Layers named by module (loss.hint_student_layer, loss.at_student_layers, ...) count as extra stages
    after a model's own, so the rest of the plan reads one list of shapes per model."""
    if not (loss_cfg.hint_weight or loss_cfg.at_weight):
        return None
    dims = (data.in_channels, data.image_size, data.num_classes)
    named = named_layer_plan(loss_cfg, student_arch, teacher_arch, dims)
    student, teacher = named.student_shapes, named.teacher_shapes
    own_student, own_teacher = student[:named.student_own], teacher[:named.teacher_own]  # what stage keys index

    hint_stages, hint_shapes = (0, 0), ((), ())
    if loss_cfg.hint_weight:
        hint_stages = (named.hint[0] if named.hint[0] is not None else
                       pick_stage(loss_cfg.hint_student_stage, own_student, "loss.hint_student_stage", student_arch),
                       named.hint[1] if named.hint[1] is not None else
                       pick_stage(loss_cfg.hint_teacher_stage, own_teacher, "loss.hint_teacher_stage", teacher_arch))
        hint_shapes = (student[hint_stages[0]], teacher[hint_stages[1]])
    if len(hint_shapes[0]) != len(hint_shapes[1]):
        raise ConfigError(
            f"the hint cannot match student {student_arch} stage {hint_stages[0]} ({describe(hint_shapes[0])}) "
            f"to teacher {teacher_arch} stage {hint_stages[1]} ({describe(hint_shapes[1])}): a hint needs two "
            f"feature maps or two vectors; choose others with loss.hint_student_stage / loss.hint_teacher_stage "
            f"or by name with loss.hint_student_layer / loss.hint_teacher_layer"
        )

    at_stages = ()
    if loss_cfg.at_weight:
        s_list, t_list = named.at if named.at is not None else (loss_cfg.at_student_stages, loss_cfg.at_teacher_stages)
        if s_list is None and t_list is None:  # pair the last stages of both, from the end
            k = min(len(own_student), len(own_teacher))
            s_list, t_list = list(range(-k, 0)), list(range(-k, 0))
        if s_list is None or t_list is None or len(s_list) != len(t_list) or not len(s_list):
            raise ConfigError(
                f"loss.at_student_stages={s_list} and loss.at_teacher_stages={t_list} must be two lists of the "
                f"same, non-zero length (stage pairs), or both null to pair the last stages of each model"
            )
        s_pool, t_pool = (student, teacher) if named.at is not None else (own_student, own_teacher)
        at_stages = tuple(
            (pick_stage(s, s_pool, "loss.at_student_stages", student_arch),
             pick_stage(t, t_pool, "loss.at_teacher_stages", teacher_arch))
            for s, t in zip(s_list, t_list)
        )
        for s, t in at_stages:
            for arch, stage, shape in ((student_arch, s, student[s]), (teacher_arch, t, teacher[t])):
                if len(shape) != 3:
                    raise ConfigError(f"attention transfer needs spatial feature maps, but {arch} stage {stage} "
                                      f"outputs {describe(shape)}; set loss.at_weight=0 for this pair")
    at_weight = scaled_at_weight(loss_cfg.at_weight, data.image_size)  # kdrun/feature_scale.py: the CIFAR meaning
    return FeatureTerms(float(loss_cfg.hint_weight), hint_stages, hint_shapes, at_weight, at_stages,
                        named.student_layers, named.teacher_layers)


def regressor(in_shape: Shape, out_shape: Shape) -> nn.Module:
    """FitNets' regressor: a 1x1 convolution between feature maps, a linear map between vectors,
    then BatchNorm, as RepDistiller's and mdistiller's ConvReg (whose hint weight of 100 kdrun
    copies); without their ReLU, since some stage outputs here (the CNNs') are pre-activation."""
    if len(in_shape) == 3:
        return nn.Sequential(nn.Conv2d(in_shape[0], out_shape[0], kernel_size=1), nn.BatchNorm2d(out_shape[0]))
    return nn.Sequential(nn.Linear(in_shape[0], out_shape[0]), nn.BatchNorm1d(out_shape[0]))


class FeatureDistiller(nn.Module):
    """The hint and attention terms of one student/teacher pair. Owns the hint regressor:
    the strategy trains it, and it is never part of the saved student."""

    def __init__(self, terms: FeatureTerms):
        super().__init__()
        self.terms = terms
        self.regressor = regressor(*terms.hint_shapes) if terms.hint_weight else None
        self.taps: tuple[LayerTap, LayerTap] | None = None

    def tap(self, student: nn.Module, teacher: nn.Module) -> "FeatureDistiller":
        """Hook the named layers of both models; their outputs join each forward's stage features."""
        if self.terms.student_layers or self.terms.teacher_layers:
            self.taps = (LayerTap(feature_root(student), list(self.terms.student_layers)).attach(),
                         LayerTap(feature_root(teacher), list(self.terms.teacher_layers)).attach())
        return self

    def forward(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        terms, losses = self.terms, {}
        if self.taps is not None:
            student_features = [*student_features, *self.taps[0].outputs()]
            teacher_features = [*teacher_features, *self.taps[1].outputs()]
        if self.regressor is not None:
            s, t = terms.hint_stages
            losses["hint"] = terms.hint_weight * hint_loss(self.regressor(student_features[s]), teacher_features[t])
        if terms.at_weight:
            losses["at"] = terms.at_weight * at_loss([student_features[s] for s, _ in terms.at_stages],
                                                     [teacher_features[t] for _, t in terms.at_stages])
        return losses
