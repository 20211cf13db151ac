"""Feature terms between layers named by module path, on any model.

    kdrun loss.hint_weight=100 loss.hint_student_layer=layer2 loss.hint_teacher_layer=layer3
    kdrun loss.at_weight=1000 loss.at_student_layers=[layer3,layer4] loss.at_teacher_layers=[layer3,layer4]

A named layer becomes an extra stage of its model, after the model's own (zoo stages or an external
model's defaults), captured by a forward hook (kdrun.models.layers.LayerTap). A name given for one side
only pairs with the other side's stage key (loss.hint_teacher_stage, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from kdrun.errors import ConfigError
from kdrun.models import build_model
from kdrun.models.layers import feature_root, find_layer, layer_shapes

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NamedLayers:
    student_shapes: tuple[Shape, ...]  # own stages, then the named layers
    teacher_shapes: tuple[Shape, ...]
    student_own: int  # how many of those are the model's own stages
    teacher_own: int
    student_layers: tuple[str, ...]
    teacher_layers: tuple[str, ...]
    hint: tuple[int | None, int | None]  # stage indices of the named hint layers (None: use the stage key)
    at: tuple[list[int], list[int]] | None  # stage indices of the named attention layers, or None


@lru_cache(maxsize=None)
def named_shapes(arch: str, dims: tuple[int, int, int], names: tuple[str, ...]) -> tuple[Shape, ...]:
    """Own stage shapes, then each named layer's, from one forward pass of an untrained model on the CPU."""
    from kdrun.strategies.features import stage_shapes

    model = build_model(arch, *dims).eval()
    root = feature_root(model)
    for name in names:
        try:
            find_layer(root, name)
        except ConfigError as exc:
            raise ConfigError(f"{arch}: {exc}") from None
    return stage_shapes(arch, *dims) + tuple(layer_shapes(model, list(names)))


def named_layer_plan(loss_cfg, student_arch: str, teacher_arch: str, dims: tuple[int, int, int]) -> NamedLayers:
    hint_s, hint_t = loss_cfg.get("hint_student_layer"), loss_cfg.get("hint_teacher_layer")
    at_s, at_t = loss_cfg.get("at_student_layers"), loss_cfg.get("at_teacher_layers")
    if (at_s is None) != (at_t is None) or (at_s is not None and (len(at_s) != len(at_t) or not len(at_s))):
        raise ConfigError(f"loss.at_student_layers={at_s} and loss.at_teacher_layers={at_t} must be two lists of "
                          f"layer names of the same, non-zero length, or both null")
    use_hint = bool(loss_cfg.hint_weight)
    use_at = bool(loss_cfg.at_weight) and at_s is not None
    s_names = _unique(([hint_s] if use_hint and hint_s else []) + (list(at_s) if use_at else []))
    t_names = _unique(([hint_t] if use_hint and hint_t else []) + (list(at_t) if use_at else []))
    own_s = len(named_shapes(student_arch, dims, ()))
    own_t = len(named_shapes(teacher_arch, dims, ()))
    s_shapes, t_shapes = named_shapes(student_arch, dims, s_names), named_shapes(teacher_arch, dims, t_names)

    def index(names: tuple[str, ...], own: int, name: str | None) -> int | None:
        return None if not name else own + names.index(name)

    hint = (index(s_names, own_s, hint_s if use_hint else None), index(t_names, own_t, hint_t if use_hint else None))
    at = None
    if use_at:
        at = ([index(s_names, own_s, n) for n in at_s], [index(t_names, own_t, n) for n in at_t])
    return NamedLayers(s_shapes, t_shapes, own_s, own_t, s_names, t_names, hint, at)


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(n) for n in names))
