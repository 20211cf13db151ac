"""Models from outside the zoo, wrapped so kdrun uses them like zoo models.

An external model's `arch` string is enough to rebuild it (checkpoints record it):

    torchvision:<name>                  torchvision.models.get_model(name, num_classes=...)
    timm:<name>                         timm.create_model(name, num_classes=..., in_chans=...)  (kdrun[timm])
    custom:<module.Class>{json kwargs}  hydra.utils.instantiate({_target_, **kwargs, num_classes=...})

The wrapper adds an input re-normalisation (identity unless pretrained weights expect other input
statistics than the dataset's; its constants are buffers, so a checkpoint carries them) and names its
stages by module path, so feature terms work on any model.
"""

from __future__ import annotations

import importlib
import json

import torch
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.sources.models.base import KDModel
from kdrun.sources.models.layers import LayerTap

PREFIXES = ("torchvision", "timm", "custom")


class InputNorm(nn.Module):
    """x normalised with the dataset's statistics -> x normalised with the model's: x * scale + shift.
    A 1-channel input is repeated for a model that takes 3 channels (grayscale data, RGB models)."""

    def __init__(self, in_channels: int, net_channels: int):
        super().__init__()
        self.repeat = net_channels if in_channels == 1 and net_channels != 1 else 1
        self.register_buffer("scale", torch.ones(1, net_channels, 1, 1))
        self.register_buffer("shift", torch.zeros(1, net_channels, 1, 1))

    def set_statistics(self, data_mean, data_std, model_mean, model_std) -> None:
        """Undo the dataset's normalisation, apply the model's: ((x*ds + dm) - mm) / ms."""
        channels = self.scale.shape[1]
        dm, ds = (torch.tensor(v, dtype=torch.float32).expand(channels) for v in (data_mean, data_std))
        mm, ms = (torch.tensor(v, dtype=torch.float32) for v in (model_mean, model_std))
        self.scale.copy_((ds / ms).view(1, -1, 1, 1))
        self.shift.copy_(((dm - mm) / ms).view(1, -1, 1, 1))

    def is_identity(self) -> bool:
        return bool((self.scale == 1).all() and (self.shift == 0).all())

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        return x * self.scale + self.shift


class ExternalModel(KDModel):
    """Any classifier `net` (logits out) as a KDModel: stage features are the outputs of the modules
    named in `stage_layers` (paths inside `net`), captured by forward hooks."""

    def __init__(self, arch: str, in_channels: int, image_size: int, num_classes: int, net: nn.Module,
                 net_channels: int):
        super().__init__(arch, in_channels, image_size, num_classes, stage_channels=[])
        self.input_norm = InputNorm(in_channels, net_channels)
        self.net = net
        self.stage_layers = default_stage_layers(net, net_channels, image_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_norm(x))

    def layer_root(self) -> nn.Module:
        return self.net  # `layer2`, not `net.layer2`

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        with LayerTap(self.net, self.stage_layers) as tap:
            logits = self.forward(x)
        return tap.outputs(), logits


def default_stage_layers(net: nn.Module, net_channels: int, image_size: int) -> list[str]:
    """The named stages of well-known layouts: ResNet-style layer1..layer4, else the last block of each
    resolution of a `features` Sequential (MobileNet, EfficientNet, VGG, ...); none otherwise."""
    children = dict(net.named_children())
    resnet = [n for n in ("layer1", "layer2", "layer3", "layer4") if n in children]
    if resnet:
        return resnet
    features = children.get("features")
    if not isinstance(features, nn.Sequential):
        return []
    names = [f"features.{i}" for i in range(len(features))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), LayerTap(net, names) as tap:
            features(torch.zeros(1, net_channels, image_size, image_size))
            sizes = [t.shape[-1] if t.dim() == 4 else None for t in tap.outputs()]
    finally:
        net.train(was_training)
    # a stage ends where the next block changes the resolution (or at the end)
    return [n for i, n in enumerate(names) if sizes[i] is not None and (i + 1 == len(names) or sizes[i + 1] != sizes[i])]


# ---- arch strings -> modules ----------------------------------------------------------------------


def is_external(arch: str) -> bool:
    return arch.split(":", 1)[0] in PREFIXES and ":" in arch


def custom_arch(target: str, kwargs: dict) -> str:
    return f"custom:{target}{json.dumps(kwargs, sort_keys=True, separators=(',', ':'))}" if kwargs else f"custom:{target}"


def check_name(source: str, name: str) -> None:
    """Raise ValueError, naming what exists, unless `name` is a model `source` can build (no model is built)."""
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise ValueError(f"unknown torchvision classification model {name!r}; some known ones: "
                             f"{', '.join(n for n in known if n.startswith(('resnet', 'mobilenet', 'efficientnet')))}")
    elif source == "timm":
        if not import_timm().is_model(name):
            raise ValueError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    else:
        module_name, _, class_name = name.rpartition(".")
        try:
            getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"custom model _target_={name!r} cannot be imported ({exc}); give an importable "
                             f"module.Class that accepts num_classes=") from exc


def build_external(arch: str, in_channels: int, image_size: int, num_classes: int) -> ExternalModel:
    source, name = arch.split(":", 1)
    if source == "torchvision":
        net, net_channels = _torchvision(name, num_classes), 3
    elif source == "timm":
        net, net_channels = _timm(name, num_classes, in_channels), in_channels
    else:
        net, net_channels = _custom(name, num_classes), in_channels
    return ExternalModel(arch, in_channels, image_size, num_classes, net, net_channels)


def _torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision

    check_name("torchvision", name)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    timm = import_timm()
    check_name("timm", name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def import_timm():
    try:
        import timm
    except ImportError as exc:
        raise ConfigError("teacher=timm / student=timm needs the timm package: pip install 'kdrun[timm]'") from exc
    return timm


def _custom(spec: str, num_classes: int) -> nn.Module:
    from hydra.utils import instantiate

    brace = spec.find("{")
    target, kwargs = (spec, {}) if brace < 0 else (spec[:brace], json.loads(spec[brace:]))
    check_name("custom", target)
    net = instantiate({"_target_": target, **kwargs, "num_classes": num_classes})
    if not isinstance(net, nn.Module):
        raise ValueError(f"custom model _target_={target!r} built a {type(net).__name__}, not an nn.Module")
    return net
