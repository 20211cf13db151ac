import pytest
import torch

from kdrun.sources.models import MODEL_NAMES, KDModel, build_model, count_parameters, model_size_mb

# One representative per family for the slower compile / channels_last checks.
FAMILY_REPRESENTATIVES = ["resnet8", "resnet18", "resnet50", "cnn_student", "mlp"]


def test_model_names_order():
    assert MODEL_NAMES == (
        "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
        "resnet8x4", "resnet32x4", "resnet18", "resnet34", "resnet50",
        "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "mobilenetv2", "shufflenetv1", "shufflenetv2",
        "cnn_teacher", "cnn_student", "mlp",
    )  # fmt: skip


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(("in_channels", "image_size"), [(1, 8), (1, 28), (3, 32), (3, 8), (1, 32), (3, 28)])
def test_forward_and_features(name, in_channels, image_size):
    num_classes = 7
    model = build_model(name, in_channels, image_size, num_classes).eval()
    assert isinstance(model, KDModel)
    assert (model.arch, model.in_channels, model.image_size, model.num_classes) == (
        name, in_channels, image_size, num_classes,
    )  # fmt: skip
    x = torch.randn(2, in_channels, image_size, image_size)
    with torch.no_grad():
        logits = model(x)
        features, feature_logits = model.forward_features(x)
    assert logits.shape == (2, num_classes)
    assert torch.equal(feature_logits, logits)
    assert len(features) == len(model.stage_channels) >= 2
    assert [f.shape[1] for f in features] == model.stage_channels
    assert all(f.shape[0] == 2 for f in features)


@pytest.mark.parametrize(
    ("name", "expected_sizes"),
    [("resnet20", [32, 16, 8]), ("resnet8x4", [32, 16, 8]), ("resnet18", [32, 16, 8, 4]), ("cnn_teacher", [16, 8])],
)
def test_stage_resolutions(name, expected_sizes):
    features, _ = build_model(name, 3, 32, 10).forward_features(torch.randn(2, 3, 32, 32))
    assert [f.shape[-1] for f in features] == expected_sizes


def test_features_are_part_of_the_graph():
    # Hints/attention losses backpropagate through the features into the network.
    model = build_model("resnet8", 3, 32, 10)
    features, _ = model.forward_features(torch.randn(2, 3, 32, 32))
    features[0].pow(2).mean().backward()
    assert model.stem[0].weight.grad is not None
    assert model.fc.weight.grad is None


@pytest.mark.parametrize(
    ("name", "num_classes", "low", "high"),
    [
        ("resnet20", 10, 0.26e6, 0.28e6),
        ("resnet56", 10, 0.85e6, 0.87e6),
        # RepDistiller reports 1.23M and 7.43M for CIFAR-100.
        ("resnet8x4", 100, 1.225e6, 1.235e6),
        ("resnet32x4", 100, 7.425e6, 7.435e6),
    ],
)
def test_parameter_counts_match_references(name, num_classes, low, high):
    assert low <= count_parameters(build_model(name, 3, 32, num_classes)) <= high


@pytest.mark.parametrize("image_size", [8, 28, 32])
def test_cnn_teacher_much_larger_than_student(image_size):
    # Conv weights shrink 256x from teacher to student but the classifier only 16x,
    # so the ratio is ~59x at 32x32, ~70x at 28x28 and ~200x at 8x8.
    teacher = count_parameters(build_model("cnn_teacher", 1, image_size, 10))
    student = count_parameters(build_model("cnn_student", 1, image_size, 10))
    assert teacher > 50 * student


def test_model_size_counts_parameters_and_buffers():
    model = build_model("resnet8", 3, 32, 10)
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    assert buffer_bytes > 0
    assert model_size_mb(model) == pytest.approx((count_parameters(model) * 4 + buffer_bytes) / 2**20)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="resnet21") as excinfo:
        build_model("resnet21", 3, 32, 10)
    assert all(name in str(excinfo.value) for name in MODEL_NAMES)


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_channels_last_and_autocast(name):
    model = build_model(name, 3, 32, 10).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    x_before = x.clone()
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features, logits = model.forward_features(x)
    assert torch.equal(x, x_before)  # no in-place ops on inputs
    assert logits.shape == reference.shape
    assert torch.allclose(logits.float(), reference, atol=0.2, rtol=0.1)
    assert [f.shape[1] for f in features] == model.stage_channels


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_traces_without_graph_breaks(name):
    # fullgraph=True fails on any graph break; the eager backend skips slow codegen.
    model = build_model(name, 1, 28, 10).eval()
    compiled = torch.compile(model.forward_features, backend="eager", fullgraph=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features, logits = compiled(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert [f.shape[1] for f in features] == model.stage_channels
