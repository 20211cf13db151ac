"""Which stage or layer of each model a feature term reads, checked before any teacher trains.

A term names a model's own stage by index (`student_stage=1`; negative counts from the end) or any
layer by module path (`student_layer=layer2`; `kdrun-layers` lists them), for zoo, torchvision, timm
and custom models alike. Shapes come from one forward pass of an untrained model on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.sources.models import build_model
from kdrun.sources.models.layers import feature_root, find_layer, layer_shapes

Shape = tuple[int, ...]  # one sample's output: (C, H, W) or (C,)
Ref = int | str  # a stage index (from 0) or a layer's module path


@lru_cache(maxsize=None)
def stage_shapes(arch: str, in_channels: int, image_size: int, num_classes: int) -> tuple[Shape, ...]:
    """Each stage's output shape, from one forward pass of an untrained model on the CPU."""
    model = build_model(arch, in_channels, image_size, num_classes).eval()
    with torch.no_grad():
        features, _ = model.forward_features(torch.zeros(1, in_channels, image_size, image_size))
    return tuple(tuple(f.shape[1:]) for f in features)


@lru_cache(maxsize=None)
def named_layer_shape(arch: str, dims: tuple[int, int, int], name: str) -> Shape:
    model = build_model(arch, *dims).eval()
    try:
        find_layer(feature_root(model), name)
    except ConfigError as exc:
        raise ConfigError(f"{arch}: {exc}") from None
    return tuple(layer_shapes(model, [name])[0])


def describe(shape: Shape) -> str:
    return f"a {shape[0]}-vector" if len(shape) == 1 else f"a {'x'.join(map(str, shape))} (CxHxW) feature map"


@dataclass(frozen=True)
class FeatureContext:
    """What a feature term is built from: both architectures and the data's dimensions."""

    student_arch: str
    teacher_arch: str
    dims: tuple[int, int, int]  # in_channels, image_size, num_classes
    train_size: int | None = None  # samples in the training split, where batches carry their positions (CRD)

    @property
    def image_size(self) -> int:
        return self.dims[1]

    def arch(self, side: str) -> str:
        return self.student_arch if side == "student" else self.teacher_arch

    def stages(self, side: str) -> tuple[Shape, ...]:
        return stage_shapes(self.arch(side), *self.dims)

    def pick(self, side: str, term: str, stage: int | None, layer: str | None, key: str) -> tuple[Ref, Shape]:
        """The stage (by index) or layer (by name) one side of a term reads, with its output shape."""
        arch = self.arch(side)
        if layer:
            return str(layer), named_layer_shape(arch, self.dims, str(layer))
        shapes = self.stages(side)
        n = len(shapes)
        if isinstance(stage, bool) or not isinstance(stage, int) or not -n <= stage < n:
            if not n:
                raise ConfigError(f"loss.terms.{term}.{key}={stage!r}, but {arch} has no named stages; pick its "
                                  f"layers by name (loss.terms.{term}.{side}_layer...; `kdrun-layers` lists them)")
            raise ConfigError(f"loss.terms.{term}.{key}={stage!r}, but {arch} has {n} stages; allowed: "
                              f"{-n}..{n - 1} (negative counts from the end)")
        return stage % n, shapes[stage % n]


class StageOutputs:
    """One forward pass's stage outputs, plus the named layers the feature terms tapped."""

    def __init__(self, stages: list[Tensor], layers: dict[str, Tensor]):
        self.stages, self.layers = stages, layers

    def __getitem__(self, ref: Ref) -> Tensor:
        return self.layers[ref] if isinstance(ref, str) else self.stages[ref]


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two feature maps to the smaller one's height and width."""
    if a.dim() != 4 or a.shape[2:] == b.shape[2:]:
        return a, b
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def stage_module(model: nn.Module, ref: Ref) -> nn.Module | None:
    """The module whose output a stage index or layer name refers to; None where a model's stages are not
    modules (e.g. the small CNNs' stages are computed inline)."""
    if isinstance(ref, str):
        return find_layer(feature_root(model), ref)
    if isinstance(getattr(model, "stages", None), nn.ModuleList):
        return model.stages[ref]
    names = getattr(model, "stage_layers", None)
    return find_layer(feature_root(model), names[ref]) if names else None
