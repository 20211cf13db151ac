"""The CIFAR-100 benchmark zoo of RepDistiller/CRD and mdistiller: sizes and stages."""

import pytest
import torch

from kdrun.sources.models import build_model, count_parameters

# Exact parameter counts at 100 classes, 3x32x32, of the architectures in RepDistiller's
# models/ (github.com/HobbitLong/RepDistiller, commit eedab9d: wrn.py, vgg.py `*_bn`,
# mobilenetv2.py `mobile_half`, ShuffleNetv1.py, ShuffleNetv2.py, resnetv2.py `ResNet50`,
# resnet.py), the files mdistiller copies for CIFAR-100. Rounded to 0.01M they are the
# sizes the CRD/DKD tables' readers quote: 2.26M, 0.70M, 0.57M, 9.46M, 3.96M, 0.81M, ...
PUBLISHED_COUNTS = {
    "wrn_40_2": 2_255_156,
    "wrn_40_1": 569_780,
    "wrn_16_2": 703_284,
    "vgg13": 9_462_180,
    "vgg8": 3_965_028,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
    "resnet50": 23_705_252,  # RepDistiller's CIFAR ResNet50 is kdrun's resnet50 (kuangliu stem)
    "resnet110": 1_736_564,
    "resnet56": 861_620,
    "resnet32": 472_756,
    "resnet20": 278_324,
    "resnet32x4": 7_433_860,
    "resnet8x4": 1_233_540,
}

# (channels, side) of every stage at 32x32: the maps RepDistiller's feature terms read.
STAGES = {
    "wrn_40_2": [(32, 32), (64, 16), (128, 8)],
    "wrn_40_1": [(16, 32), (32, 16), (64, 8)],
    "wrn_16_2": [(32, 32), (64, 16), (128, 8)],
    "vgg13": [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)],
    "vgg8": [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)],
    "mobilenetv2": [(12, 16), (16, 8), (48, 4), (160, 2)],
    "shufflenetv1": [(240, 16), (480, 8), (960, 4)],
    "shufflenetv2": [(116, 16), (232, 8), (464, 4)],
}


@pytest.mark.parametrize("name", PUBLISHED_COUNTS)
def test_parameter_count_matches_the_benchmark(name):
    assert count_parameters(build_model(name, 3, 32, 100)) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize("name", STAGES)
def test_forward_features_gives_the_stages(name):
    model = build_model(name, 3, 32, 100).eval()
    with torch.no_grad():
        features, logits = model.forward_features(torch.randn(2, 3, 32, 32))
    assert [(f.shape[1], f.shape[-1]) for f in features] == STAGES[name]
    assert [c for c, _ in STAGES[name]] == model.stage_channels
    assert logits.shape == (2, 100)


def test_channel_shuffle_interleaves_the_groups():
    from kdrun.sources.models.shufflenet import channel_shuffle

    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
