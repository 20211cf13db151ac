"""From a `teacher` / `student` config group to a model: the zoo, torchvision, timm or any nn.Module.

A group's `source` says where the architecture comes from (absent: kdrun's zoo); `arch_of` turns the
group into the arch string that `build_model` understands and checkpoints record. `weights`
(and `pretrained` for timm) give initial weights, loaded by kdrun.sources.pretrained.
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from kdrun.errors import ConfigError
from kdrun.sources.models import build_model, model_options
from kdrun.sources.models.external import custom_arch
from kdrun.sources.pretrained import load_pretrained
from kdrun.config.schema import model_group_keys, source_of


def arch_of(model_cfg) -> str:
    """The arch string of a teacher/student group: `resnet20`, `torchvision:resnet18`, `custom:pkg.Net{...}`."""
    source = source_of(model_cfg)
    if source == "zoo":
        return model_cfg.arch
    if source == "custom":
        target = model_cfg.get("_target_")
        if not target:
            raise ConfigError("student=custom / teacher=custom needs the class to build: "
                              "student._target_=mypkg.nets.TinyNet (it is given num_classes=)")
        values = OmegaConf.to_container(model_cfg, resolve=True)
        return custom_arch(target, {k: v for k, v in values.items() if k not in model_group_keys()})
    return f"{source}:{model_cfg.arch}"


def path_safe(arch: str) -> str:
    """An arch string as one directory name (custom kwargs and colons become underscores)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", arch).strip("_")[:100]


def is_pretrained(model_cfg) -> bool:
    return bool(model_cfg.get("weights")) or bool(model_cfg.get("pretrained", False))


def build_configured(model_cfg, data, role: str, *, new_head_ok: bool = True):
    """The group's model for `data`, with its pretrained weights if it names any (on the CPU)."""
    try:
        options = model_options(model_cfg, role) if source_of(model_cfg) == "zoo" else None
        model = build_model(arch_of(model_cfg), data.in_channels, data.image_size, data.num_classes, options)
    except ValueError as exc:  # an unknown torchvision/timm name or an unimportable _target_
        raise ConfigError(f"{role}: {exc}") from exc
    if is_pretrained(model_cfg):
        load_pretrained(model, model_cfg, data, role, new_head_ok=new_head_ok)
    return model
