"""ShuffleNet V1 (groups 3) and V2 (width 1x) for CIFAR, as in the RepDistiller/CRD benchmark.

Both start with a 1x1 conv to 24 channels at full resolution (no stride, no
max-pool: 32x32 inputs are small), then three stages that each halve the map.
The stages' outputs are the features.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel

_STEM = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups so the next grouped conv mixes them."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(in_planes: int, out_planes: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a downsampling unit concatenates an avg-pooled input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        # The first unit reads the 24-channel stem with an ungrouped 1x1 (the paper: too few input channels to group).
        self.stride, self.first_groups = stride, 1 if in_planes == _STEM else groups
        branch = out_planes - in_planes if stride == 2 else out_planes
        mid = branch // 4
        self.reduce = _conv_bn(in_planes, mid, 1, groups=self.first_groups)
        self.depthwise = _conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = _conv_bn(mid, branch, 1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.reduce(x)), self.first_groups)
        out = self.expand(F.relu(self.depthwise(out)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleV2Unit(nn.Module):
    """Half the channels pass through; the other half goes 1x1, depthwise 3x3, 1x1; then a shuffle."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        half = planes // 2
        self.branch = nn.Sequential(
            _conv_bn(half, half, 1), nn.ReLU(), _conv_bn(half, half, 3, groups=half), _conv_bn(half, half, 1), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Two stride-2 branches, each to half the output channels, concatenated and shuffled."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        half = out_planes // 2
        self.left = nn.Sequential(_conv_bn(in_planes, in_planes, 3, 2, groups=in_planes), _conv_bn(in_planes, half, 1), nn.ReLU())
        self.right = nn.Sequential(
            _conv_bn(in_planes, half, 1), nn.ReLU(), _conv_bn(half, half, 3, 2, groups=half), _conv_bn(half, half, 1), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNet(KDModel):
    def __init__(self, arch: str, in_channels: int, image_size: int, num_classes: int, *, version: int) -> None:
        widths, blocks = ((240, 480, 960), (4, 8, 4)) if version == 1 else ((116, 232, 464), (3, 7, 3))
        super().__init__(arch, in_channels, image_size, num_classes, list(widths))
        self.stem = nn.Sequential(_conv_bn(in_channels, _STEM, 1), nn.ReLU())
        stages, in_planes = [], _STEM
        for width, count in zip(widths, blocks):
            if version == 1:
                units = [ShuffleV1Unit(in_planes if i == 0 else width, width, 2 if i == 0 else 1, groups=3) for i in range(count)]
            else:
                units = [ShuffleV2Down(in_planes, width), *(ShuffleV2Unit(width) for _ in range(count))]
            stages.append(nn.Sequential(*units))
            in_planes = width
        self.stages = nn.ModuleList(stages)
        # V2 ends with a 1x1 conv to 1024 channels before pooling; V1 pools its last stage directly.
        self.head = nn.Sequential(_conv_bn(in_planes, 1024, 1), nn.ReLU()) if version == 2 else nn.Identity()
        self.fc = nn.Linear(1024 if version == 2 else in_planes, num_classes)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        features = self.run_stages(self.stem(x))
        out = features[-1]
        pooled = F.adaptive_avg_pool2d(self.head(out), 1).flatten(1)
        return features, self.fc(pooled)


def shufflenet(version: int, **kwargs) -> ShuffleNet:
    return ShuffleNet(version=version, **kwargs)
