"""CIFAR-style ResNets: a 3x3 stride-1 stem, no max-pool, then stages.

One class covers both families used in the KD literature:
- resnet8..resnet110, resnet8x4, resnet32x4: RepDistiller/CRD `models/resnet.py`,
  depth 6n+2, three stages of n BasicBlocks with strides 1, 2, 2.
- resnet18/34/50: kuangliu/pytorch-cifar (CRD `resnetv2.py`), four stages
  64..512 with strides 1, 2, 2, 2.
"""

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.sources.models.base import KDModel


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    # Projection (1x1 conv + BN) only where the shape changes, as in both references.
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(KDModel):
    def __init__(
        self,
        arch: str,
        in_channels: int,
        image_size: int,
        num_classes: int,
        *,
        block: type[BasicBlock | Bottleneck],
        stem_width: int,
        widths: list[int],
        blocks: list[int],
        strides: list[int],
    ) -> None:
        stage_channels = [w * block.expansion for w in widths]
        super().__init__(arch, in_channels, image_size, num_classes, stage_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(),
        )
        stages, in_planes = [], stem_width
        for width, count, stride in zip(widths, blocks, strides):
            layers = []
            for i in range(count):
                layers.append(block(in_planes, width, stride if i == 0 else 1))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        features = self.run_stages(self.stem(x))
        out = features[-1]
        # Adaptive pooling instead of the references' fixed AvgPool(8)/(4): any image size works.
        logits = self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
        return features, logits


def cifar_resnet(depth: int, num_filters: tuple[int, ...] = (16, 16, 32, 64), **kwargs) -> ResNet:
    """RepDistiller's resnet<depth>: num_filters = (stem, stage1, stage2, stage3)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    stem_width, *widths = num_filters
    return ResNet(block=BasicBlock, stem_width=stem_width, widths=widths, blocks=[n] * 3, strides=[1, 2, 2], **kwargs)


def imagenet_style_resnet(block: type[BasicBlock | Bottleneck], blocks: list[int], **kwargs) -> ResNet:
    """resnet18/34/50 with the CIFAR stem (kuangliu/pytorch-cifar)."""
    return ResNet(block=block, stem_width=64, widths=[64, 128, 256, 512], blocks=blocks, strides=[1, 2, 2, 2], **kwargs)


resnet18 = partial(imagenet_style_resnet, BasicBlock, [2, 2, 2, 2])
resnet34 = partial(imagenet_style_resnet, BasicBlock, [3, 4, 6, 3])
resnet50 = partial(imagenet_style_resnet, Bottleneck, [3, 4, 6, 3])
