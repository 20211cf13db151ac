"""MobileNetV2 at half width for CIFAR: RepDistiller's `mobile_half` (expansion 6, width 0.5).

A stride-2 3x3 stem, seven groups of inverted residual blocks (the paper's
table at half width: 8, 12, 16, 32, 48, 80, 160 channels), a 1x1 conv to
1280 channels (the reference keeps 1280 below width 1), global pooling and
the classifier. The stages are the outputs of groups 1, 2, 4 and 6, the four
feature maps the benchmark's feature terms read.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel

# (expansion, channels at width 1, blocks, first stride); expansion None = the model's
_GROUPS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))
_STAGE_GROUPS = (1, 2, 4, 6)
_LAST_CHANNELS = 1280


def _conv_bn(in_planes: int, out_planes: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_planes)]


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; a residual where the shape allows."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.residual = stride == 1 and in_planes == out_planes
        self.body = nn.Sequential(
            *_conv_bn(in_planes, hidden, 1), nn.ReLU(),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU(),
            *_conv_bn(hidden, out_planes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(KDModel):
    def __init__(
        self, arch: str, in_channels: int, image_size: int, num_classes: int, *, expansion: int = 6, width: float = 0.5
    ) -> None:
        group_channels = [int(c * width) for _, c, _, _ in _GROUPS]
        super().__init__(arch, in_channels, image_size, num_classes, [group_channels[g] for g in _STAGE_GROUPS])
        in_planes = int(32 * width)
        self.stem = nn.Sequential(*_conv_bn(in_channels, in_planes, 3, 2), nn.ReLU())
        groups = []
        for (t, _, count, stride), out_planes in zip(_GROUPS, group_channels):
            blocks = []
            for i in range(count):
                blocks.append(InvertedResidual(in_planes, out_planes, stride if i == 0 else 1, t or expansion))
                in_planes = out_planes
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.ModuleList(groups)
        self.head = nn.Sequential(*_conv_bn(in_planes, _LAST_CHANNELS, 1), nn.ReLU())
        self.fc = nn.Linear(_LAST_CHANNELS, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        out, features = self.stem(x), []
        for i, group in enumerate(self.groups):
            out = group(out)
            if i in _STAGE_GROUPS:
                features.append(out)
        pooled = F.adaptive_avg_pool2d(self.head(out), 1).flatten(1)
        return features, self.fc(pooled)
