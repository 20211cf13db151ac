"""A two-hidden-layer MLP on flattened pixels."""

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.models.base import KDModel


class MLP(KDModel):
    def __init__(self, arch: str, in_channels: int, image_size: int, num_classes: int, *, hidden: int = 256) -> None:
        super().__init__(arch, in_channels, image_size, num_classes, [hidden, hidden])
        self.fc1 = nn.Linear(in_channels * image_size * image_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        h1 = F.relu(self.fc1(x.flatten(1)))
        h2 = F.relu(self.fc2(h1))
        return [h1, h2], self.fc3(h2)
