"""The teacher/student CNN pair of the Keras "Knowledge Distillation" MNIST example."""

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel


class SmallCNN(KDModel):
    """Conv(3x3, s2) -> LeakyReLU(0.2) -> MaxPool(2, s1, same) -> Conv(3x3, s2) -> Flatten -> Linear."""

    def __init__(
        self, arch: str, in_channels: int, image_size: int, num_classes: int, *, widths: tuple[int, int]
    ) -> None:
        super().__init__(arch, in_channels, image_size, num_classes, list(widths))
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1)
        # Each stride-2 conv with padding 1 maps size s to ceil(s / 2), as Keras' padding="same".
        final_size = -(-image_size // 4)
        self.fc = nn.Linear(widths[1] * final_size * final_size, num_classes)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        f1 = self.conv1(x)
        out = F.leaky_relu(f1, 0.2)
        # Keras "same" max-pooling with stride 1 pads one row/column at the end, which never wins.
        out = F.max_pool2d(F.pad(out, (0, 1, 0, 1), value=float("-inf")), 2, stride=1)
        f2 = self.conv2(out)
        return [f1, f2], self.fc(f2.flatten(1))


def cnn_teacher(**kwargs) -> SmallCNN:
    return SmallCNN(widths=(256, 512), **kwargs)


def cnn_student(**kwargs) -> SmallCNN:
    return SmallCNN(widths=(16, 32), **kwargs)
