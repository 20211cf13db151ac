"""kdrun.deploy pieces checked against direct computations: FLOPs, pruning, corruptions, FGSM."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur as torchvision_blur

from kdrun.deploy.corruptions import CORRUPTIONS, PARAMS, SEVERITIES, corrupt, fgsm, gaussian_blur
from kdrun.deploy.flops import count_flops, count_macs
from kdrun.compress.prune import prune_channels, prune_student, prune_unstructured, shrink_to, sparsity
from kdrun.deploy.student import RawImageModel
from kdrun.errors import ConfigError
from kdrun.sources.models import build_model, count_parameters


def test_resnet20_at_32x32_has_the_published_41_million_multiply_adds():
    macs = count_macs(build_model("resnet20", 3, 32, 10), (3, 32, 32))
    assert macs == pytest.approx(41e6, rel=0.02)  # He et al. 2016 / the CIFAR KD tables: ~41 M "FLOPs"


def test_flops_of_the_cnn_student_match_a_count_by_hand():
    # conv1: 16 filters x 4x4 outputs x 1x3x3; conv2: 32 x 2x2 x 16x3x3; fc: 128 -> 10. Two FLOPs per multiply-add.
    macs = 16 * 16 * 9 + 32 * 4 * 16 * 9 + 128 * 10
    assert count_flops(build_model("cnn_student", 1, 8, 10), (1, 8, 8)) == 2 * macs


def test_raw_image_model_folds_the_normalisation_in():
    inner = build_model("cnn_student", 1, 8, 10).eval()
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    expected = inner((x.float() / 255 - 0.3) / 0.4)
    torch.testing.assert_close(RawImageModel(inner, (0.3,), (0.4,))(x), expected)


def test_unstructured_pruning_reaches_the_amount_and_training_keeps_the_zeros():
    torch.manual_seed(0)
    model = build_model("resnet8", 3, 16, 10)
    prune_unstructured(model, 0.6)
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)
    assert set(model.state_dict()) == set(build_model("resnet8", 3, 16, 10).state_dict())  # a plain checkpoint
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
        optimizer.step()
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)


def test_channel_pruning_keeps_the_strongest_filters_and_the_checkpoint_reloads():
    torch.manual_seed(0)
    model = build_model("resnet8", 3, 16, 10).eval()
    block = model.stages[1][0]
    norms = block.conv1.weight.detach().abs().flatten(1).sum(1)
    strongest = norms.topk(16).indices.sort().values
    expected_filters = block.conv1.weight.detach()[strongest].clone()
    params = count_parameters(model)
    prune_channels(model, 0.5)
    assert block.conv1.out_channels == 16 and block.bn1.num_features == 16 and block.conv2.in_channels == 16
    torch.testing.assert_close(block.conv1.weight.detach(), expected_filters)
    assert count_parameters(model) < 0.7 * params
    x = torch.randn(2, 3, 16, 16)
    fresh = build_model("resnet8", 3, 16, 10).eval()
    shrink_to(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))


def test_channel_pruning_of_the_cnn_cuts_the_linear_columns_of_each_channel():
    torch.manual_seed(0)
    model = build_model("cnn_student", 1, 8, 10).eval()
    x = torch.randn(3, 1, 8, 8)
    # Silence half of each conv's channels: pruning must drop exactly those (and their fc columns),
    # which leaves the logits as they were.
    with torch.no_grad():
        for conv, half in ((model.conv1, 8), (model.conv2, 16)):
            conv.weight[half:] = 0
            conv.bias[half:] = 0
            conv.weight[:half] += 1  # clearly the strongest
    before = model(x)
    prune_channels(model, 0.5)
    assert model.conv1.out_channels == 8 and model.conv2.in_channels == 8
    assert model.conv2.out_channels == 16 and model.fc.in_features == 16 * 4
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("bad, message", [
    ({"kind": "magnitude", "amount": 0.5}, "unknown student.prune.kind 'magnitude'; allowed: none, unstructured"),
    ({"kind": "channel", "amount": 1.0}, "student.prune.amount must be a number in [0, 1)"),
    ({"kind": "none", "amount": 0.3}, "needs student.prune.kind=unstructured or channel"),
])
def test_bad_prune_settings_are_refused_by_name(bad, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        prune_student(build_model("cnn_student", 1, 8, 10), bad)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_deterministic_for_a_seed_and_severity_0_is_the_identity(name):
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(corrupt(x, name, 0, seed=3), x)
    distances = []
    for severity in SEVERITIES:
        a, b = corrupt(x, name, severity, seed=3), corrupt(x, name, severity, seed=3)
        assert a.dtype == torch.uint8 and a.shape == x.shape
        assert torch.equal(a, b)
        distances.append((a.float() - x.float()).abs().mean().item())
    assert distances[0] > 0
    assert distances[-1] > distances[0]  # severity 5 is further from the image than severity 1


def test_noise_draws_depend_on_the_seed():
    x = torch.full((2, 1, 8, 8), 128, dtype=torch.uint8)
    assert not torch.equal(corrupt(x, "gaussian_noise", 3, seed=0), corrupt(x, "gaussian_noise", 3, seed=1))


def test_contrast_and_brightness_match_their_formulas():
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    xf = x.float() / 255
    mean = xf.mean(dim=(1, 2, 3), keepdim=True)
    expected = (((xf - mean) * 0.5 + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(corrupt(x, "contrast", 2), expected)
    assert torch.equal(corrupt(x, "brightness", 5), ((xf + 0.3).clamp(0, 1) * 255).round().to(torch.uint8))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_matches_torchvisions(severity):
    # kdrun blurs with its own few lines (importing torchvision cost every run a second); torchvision's
    # gaussian_blur is the independent computation, on grey and colour images, edges included.
    sigma = PARAMS["gaussian_blur"][severity - 1]
    kernel = 2 * math.ceil(3 * sigma) + 1
    for channels in (1, 3):
        x = torch.rand(2, channels, 8, 10, generator=torch.Generator().manual_seed(severity))
        expected = torchvision_blur(x, [kernel, kernel], [sigma, sigma])
        assert torch.allclose(gaussian_blur(x, kernel, sigma), expected, atol=1e-6)
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = (torchvision_blur(images.float() / 255, [kernel, kernel], [sigma, sigma]) * 255).round().clamp(0, 255)
    assert (corrupt(images, "gaussian_blur", severity).float() - expected).abs().max() <= 1


def test_unknown_corruption_and_severity_are_refused():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="unknown corruption 'fog'; allowed: gaussian_noise"):
        corrupt(x, "fog", 1)
    with pytest.raises(ConfigError, match="severity must be 0..5, got 6"):
        corrupt(x, "contrast", 6)


def test_fgsm_steps_eps_along_the_sign_of_the_loss_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randint(20, 230, (4, 1, 4, 4), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0])
    xf = x.float().requires_grad_(True)
    nn.functional.cross_entropy(model(xf), y).backward()
    expected = x.float() + 4 * xf.grad.sign()  # eps 4/255 in pixel units; no clamping this far from the ends
    torch.testing.assert_close(fgsm(model, x, y, 4 / 255), expected)
