"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016), as in the RepDistiller/CRD benchmark.

wrn_<depth>_<k>: a 3x3 stem of 16 channels, three stages of (depth - 4) / 6
pre-activation blocks with 16k, 32k, 64k channels (strides 1, 2, 2), then
BN + ReLU, global pooling and the classifier. The stages are the blocks'
outputs before that last BN + ReLU, as the benchmark's feature terms use them.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a 1x1 projection of the activated input where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.projection = (
            nn.Conv2d(in_planes, planes, 1, stride, bias=False) if in_planes != planes or stride != 1 else None
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        # The reference projects the activated input; an identity shortcut keeps the raw one.
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


class WideResNet(KDModel):
    def __init__(
        self, arch: str, in_channels: int, image_size: int, num_classes: int, *, depth: int, widen: int
    ) -> None:
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        super().__init__(arch, in_channels, image_size, num_classes, widths)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, padding=1, bias=False)
        stages, in_planes = [], 16
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = [PreActBlock(in_planes if i == 0 else width, width, stride if i == 0 else 1) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            in_planes = width
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        features = self.run_stages(self.stem(x))
        out = features[-1]
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return features, self.fc(pooled)


def wrn(depth: int, widen: int, **kwargs) -> WideResNet:
    return WideResNet(depth=depth, widen=widen, **kwargs)
