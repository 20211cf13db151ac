"""Model names -> builders. A builder takes (arch, in_channels, image_size, num_classes) and, for the
architectures that have them, the options that the model config groups set (the MLP's widths, dropout)."""

from collections.abc import Callable, Mapping
from functools import partial

from kdrun.errors import ConfigError
from kdrun.models.base import KDModel
from kdrun.models.cnn import cnn_student, cnn_teacher
from kdrun.models.mlp import MLP
from kdrun.models.resnet import cifar_resnet, resnet18, resnet34, resnet50

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
    "resnet50": resnet50,
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
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    model = _BUILDERS[name](arch=name, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                            **dict(options or {}))
    model.options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (options or {}).items()}
    return model
