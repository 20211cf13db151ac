"""VGG with BatchNorm for CIFAR, as in the RepDistiller/CRD benchmark (no FC stack).

Five blocks of 3x3 conv-BN-ReLU layers; max-pooling after the first three,
global average pooling after the last, then one linear classifier. The
blocks' outputs are the stages. vgg8 has one conv per block; vgg13 two.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel

_WIDTHS = (64, 128, 256, 512, 512)
_POOLED_BLOCKS = 3  # the references pool after blocks 0-2 only at 32x32, so blocks 3-4 run on 4x4 maps


class VGG(KDModel):
    def __init__(
        self, arch: str, in_channels: int, image_size: int, num_classes: int, *, convs_per_block: int
    ) -> None:
        super().__init__(arch, in_channels, image_size, num_classes, list(_WIDTHS))
        blocks, in_planes = [], in_channels
        for width in _WIDTHS:
            layers: list[nn.Module] = []
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(in_planes, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                in_planes = width
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(blocks)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        features, out = [], x
        for i, stage in enumerate(self.stages):
            out = stage(out)
            features.append(out)
            # Pooling a 1x1 map would fail (8x8 digits reach 1x1 after three pools).
            if i < _POOLED_BLOCKS and min(out.shape[-2:]) >= 2:
                out = F.max_pool2d(out, 2)
        return features, self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def vgg(convs_per_block: int, **kwargs) -> VGG:
    return VGG(convs_per_block=convs_per_block, **kwargs)
