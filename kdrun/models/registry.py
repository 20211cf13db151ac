"""Model names -> builders. A builder takes (arch, in_channels, image_size, num_classes)."""

from collections.abc import Callable
from functools import partial

from kdrun.models.base import KDModel
from kdrun.models.cnn import cnn_student, cnn_teacher
from kdrun.models.external import build_external, is_external
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


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> KDModel:
    """A zoo model by name, or an external one by its arch string (`torchvision:resnet18`, see external.py)."""
    if is_external(name):
        return build_external(name, in_channels, image_size, num_classes)
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}, "
                         f"or torchvision:<name>, timm:<name>, custom:<module.Class>")
    return _BUILDERS[name](arch=name, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
