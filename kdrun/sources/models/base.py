"""The interface every model in the zoo shares."""

from abc import ABC, abstractmethod

from torch import Tensor, nn


class KDModel(nn.Module, ABC):
    """A classifier that can also return its intermediate features.

    Subclasses implement `forward_features`; `forward` reuses it so there is
    one code path. Feature- and attention-based strategies read the stage
    outputs directly instead of registering hooks.
    """

    def __init__(
        self, arch: str, in_channels: int, image_size: int, num_classes: int, stage_channels: list[int]
    ) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.stage_channels = list(stage_channels)
        self.options: dict = {}  # the builder's options (registry.build_model), kept in checkpoints

    @abstractmethod
    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Return (the output of each stage, the logits)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]

    def layer_root(self) -> nn.Module:
        """Where layer names start (kdrun-layers, named-layer feature terms): the model itself."""
        return self

    def run_stages(self, out: Tensor) -> list[Tensor]:
        """Each of `self.stages` in turn from `out`; the output of every stage (the last is the deepest)."""
        features = []
        for stage in self.stages:
            out = stage(out)
            features.append(out)
        return features


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Bytes of parameters and buffers (e.g. BatchNorm statistics), in MiB."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
