"""Model names -> builders. A builder takes (arch, in_channels, image_size, num_classes)."""

from collections.abc import Callable
from functools import partial

from kdrun.models.base import KDModel
from kdrun.models.cnn import cnn_student, cnn_teacher
from kdrun.models.external import build_external, is_external
from kdrun.models.mlp import MLP
from kdrun.models.mobilenetv2 import MobileNetV2
from kdrun.models.resnet import cifar_resnet, resnet18, resnet34, resnet50
from kdrun.models.shufflenet import shufflenet
from kdrun.models.vgg import vgg
from kdrun.models.wrn import wrn

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


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> KDModel:
    """A zoo model by name, or an external one by its arch string (`torchvision:resnet18`, see external.py)."""
    if is_external(name):
        return build_external(name, in_channels, image_size, num_classes)
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}, "
                         f"or torchvision:<name>, timm:<name>, custom:<module.Class>")
    return _BUILDERS[name](arch=name, in_channels=in_channels, image_size=image_size, num_classes=num_classes)
