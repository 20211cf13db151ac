"""Intermediate outputs of any model by module name, through forward hooks.

Names are module paths as `named_modules()` gives them (`layer2`, `features.6`, `stages.1`); for an
external model they start inside its wrapper. `kdrun-layers` lists them with their output shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.sources.models.base import KDModel


class LayerTap:
    """Forward hooks that keep the latest output of each named module of `model` while active."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model, self.names, self._outputs, self._handles = model, list(names), {}, []
        self.modules = {name: find_layer(model, name) for name in self.names}

    def attach(self) -> "LayerTap":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._keep(name)))
        return self

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self._outputs[name] = output
        return hook

    def captured(self) -> dict[str, object]:
        """Every output of the last forward pass, by layer name (layers that did not run are absent)."""
        return dict(self._outputs)

    def outputs(self) -> list[Tensor]:
        missing = [n for n in self.names if n not in self._outputs]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the last forward pass")
        return [self._outputs[n] for n in self.names]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "LayerTap":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


def feature_root(model: nn.Module) -> nn.Module:
    """Where layer names start: inside the wrapper of an external model (`layer2`, not `net.layer2`)."""
    return model.layer_root() if isinstance(model, KDModel) else model


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        top = [n for n, _ in model.named_children()]
        raise ConfigError(f"{type(model).__name__} has no layer {name!r}; its top-level layers are "
                          f"{', '.join(top)} (`kdrun-layers` lists every layer with its output shape)")
    return modules[name]


def layer_shapes(model: nn.Module, names: list[str]) -> list[tuple[int, ...]]:
    """Each named layer's output shape for one sample, from a forward pass on zeros (eval mode, no grad)."""
    if not names:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), LayerTap(feature_root(model), names) as tap:
            model(torch.zeros(1, model.in_channels, model.image_size, model.image_size, device=device))
            return [tuple(t.shape[1:]) for t in tap.outputs()]
    finally:
        model.train(was_training)
