"""Model names -> builders. A builder takes (arch, in_channels, image_size, num_classes) and, for the
architectures that have them, the options that the model config groups set (the MLP's widths, dropout)."""

from collections.abc import Callable, Mapping
from functools import partial

from kdrun.errors import ConfigError
from kdrun.sources.models.base import KDModel
from kdrun.sources.models.cnn import cnn_student, cnn_teacher
from kdrun.sources.models.external import build_external, is_external
from kdrun.sources.models.mlp import MLP
from kdrun.sources.models.mobilenetv2 import MobileNetV2
from kdrun.sources.models.resnet import cifar_resnet, resnet18, resnet34, resnet50
from kdrun.sources.models.shufflenet import shufflenet
from kdrun.sources.models.vgg import vgg
from kdrun.sources.models.wrn import wrn

_WIDE = (32, 64, 128, 256)  # RepDistiller's resnet8x4 / resnet32x4

_BUILDERS: dict[str, Callable[..., KDModel]] = {
    "resnet8": partial(cifar_resnet, 8),
    "resnet14": partial(cifar_resnet, 14),
    "resnet20": partial(cifar_resnet, 20),
    "resnet32": partial(cifar_resnet, 32),
    "resnet44": partial(cifar_resnet, 44),
    "resnet56": partial(cifar_resnet, 56),
    "resnet110": partial(cifar_resnet, 110),
    "resnet8x4": partial(cifar_resnet, 8, _WIDE),
    "resnet32x4": partial(cifar_resnet, 32, _WIDE),
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,  # also the CRD benchmark's CIFAR ResNet50 (RepDistiller resnetv2.ResNet50)
    "wrn_16_2": partial(wrn, 16, 2),
    "wrn_40_1": partial(wrn, 40, 1),
    "wrn_40_2": partial(wrn, 40, 2),
    "vgg8": partial(vgg, 1),
    "vgg13": partial(vgg, 2),
    "mobilenetv2": MobileNetV2,  # RepDistiller's mobile_half: expansion 6, width 0.5
    "shufflenetv1": partial(shufflenet, 1),
    "shufflenetv2": partial(shufflenet, 2),
    "cnn_teacher": cnn_teacher,
    "cnn_student": cnn_student,
    "mlp": MLP,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)

# The keys of a model group (schema.ModelKeys) that configure an architecture, by architecture.
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {"mlp": ("hidden", "dropout", "input_dropout")}
_ALL_OPTIONS = {option for options in MODEL_OPTIONS.values() for option in options}


def model_options(group: Mapping, role: str = "model") -> dict:
    """The architecture options a `teacher`/`student` group sets (null = the builder's default), as plain
    values. ConfigError names an option set for an architecture without it, or a dropout outside [0, 1)."""
    arch = group["arch"]
    chosen = {k: group[k] for k in _ALL_OPTIONS if k in group and group[k] is not None}
    allowed = MODEL_OPTIONS.get(arch, ())
    for option in sorted(chosen):
        if option not in allowed:
            raise ConfigError(f"{role}.{option}={chosen[option]!r} does not apply to {arch}; "
                             f"{arch} takes {', '.join(allowed) or 'no options'} "
                             f"(options by architecture: {MODEL_OPTIONS})")
    for option in ("dropout", "input_dropout"):
        if option in chosen and not 0 <= chosen[option] < 1:
            raise ConfigError(f"{role}.{option} must be in [0, 1) (a probability of dropping a unit), "
                              f"got {chosen[option]!r}")
    return {k: (tuple(v) if k == "hidden" else v) for k, v in chosen.items()}


def build_model(name: str, in_channels: int, image_size: int, num_classes: int,
                options: Mapping | None = None) -> KDModel:
    """A zoo model by name (with its `options`, MODEL_OPTIONS), or an external one by its arch string
    (`torchvision:resnet18`, see external.py)."""
    if is_external(name):
        return build_external(name, in_channels, image_size, num_classes)
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}, "
                         f"or torchvision:<name>, timm:<name>, custom:<module.Class>")
    model = _BUILDERS[name](arch=name, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                            **dict(options or {}))
    model.options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (options or {}).items()}
    return model
