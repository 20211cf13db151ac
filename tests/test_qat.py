"""Quantization-aware training (student.qat=true): the rounding it trains through is onnxruntime's int8."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, only_run_dir, run_kdrun
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.deploy.export import export, runner
from kdrun.deploy.int8 import quantize_onnx
from kdrun.compress.qat import Range, enable_qat, fake_quantize_weight, quantized_layers
from kdrun.deploy.student import RawImageModel
from kdrun.sources.models import build_model

pytest.importorskip("onnxruntime")


def test_weights_are_rounded_to_a_symmetric_int8_grid_per_output_channel():
    weight = torch.randn(8, 4, 3, 3) * torch.logspace(-3, 1, 8).view(8, 1, 1, 1)  # channels of very different scale
    scale = weight.abs().flatten(1).amax(1).view(8, 1, 1, 1) / 127
    expected = torch.clamp(torch.round(weight / scale), -127, 127) * scale
    torch.testing.assert_close(fake_quantize_weight(weight), expected, rtol=0, atol=1e-6)
    for channel in fake_quantize_weight(weight):
        assert len(channel.unique()) <= 255


def test_qat_layers_keep_the_plain_state_dict_and_learn_their_ranges():
    torch.manual_seed(0)
    model = build_model("cnn_student", 1, 8, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enable_qat(model)
    assert quantized_layers(model) == 3  # conv1, conv2, fc
    assert model.state_dict().keys() == before.keys()  # checkpoints load into a plain model
    x = torch.randn(64, 1, 8, 8)
    model.train()
    model(x)  # the first batch sets each range to its min/max
    ranges = [m for m in model.modules() if isinstance(m, Range)]
    assert len(ranges) == 6 and all(torch.isfinite(r.low) and r.low <= 0 <= r.high for r in ranges)
    plain = build_model("cnn_student", 1, 8, 10)
    plain.load_state_dict(model.state_dict())
    model.eval()
    with torch.no_grad():
        rounded, exact = model(x), plain(x)
    assert 0 < (rounded - exact).abs().max() < 0.1 * exact.abs().max()  # rounding: small, but not nothing


def test_a_conv_followed_by_a_batch_norm_rounds_after_the_norm():
    model = build_model("resnet8", 1, 8, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    enable_qat(model)
    assert all(conv.output_after_norm for conv in convs)  # every conv of a CIFAR ResNet has its norm
    assert not model.fc.output_after_norm


def _min_max_over(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every Range to the min/max over `images`: what onnxruntime's MinMax calibration computes."""
    seen: dict[Range, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.setdefault(m, []).append(args[0].detach()))
             for m in model.modules() if isinstance(m, Range)]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), 64):
            model(images[i:i + 64])
    for hook in hooks:
        hook.remove()
    for r, values in seen.items():
        r.low.fill_(min(v.min() for v in values))
        r.high.fill_(max(v.max() for v in values))


@pytest.mark.parametrize("arch", ["cnn_student", "resnet8"])  # resnet8: batch norms folded into its convs
def test_the_simulated_int8_model_is_onnxruntimes_int8_model(tmp_path, arch):
    """Given the same ranges, the fake-quantized PyTorch model and onnxruntime's QDQ int8 file agree: the
    rounding QAT trains through is the rounding the deployed model does."""
    torch.manual_seed(0)
    raw = RawImageModel(build_model(arch, 1, 8, 10), (0.3,), (0.3,)).eval()
    images = torch.randint(0, 256, (512, 1, 8, 8), dtype=torch.uint8)
    export(raw, "onnx", tmp_path / "fp32.onnx")
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images.numpy())
    enable_qat(raw.model)
    _min_max_over(raw, images)
    test = torch.randint(0, 256, (256, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        simulated = raw(test)
    deployed = runner("onnx", tmp_path / "int8.onnx")(test)
    agree = (simulated.argmax(1) == deployed.argmax(1)).float().mean()
    error = ((simulated - deployed).abs().max() / deployed.abs().max()).item()
    # An untrained model's logits are close together, so a little rounding flips a few top-1s (resnet8's
    # residual sums are also rounded by onnxruntime, not in training); the logits agree within 5%.
    assert agree >= 0.95
    assert error < 0.05


@pytest.mark.slow
def test_kdrun_distils_into_a_qat_student_that_exports_to_int8(tmp_path):
    """strategy=kd student.qat=true end to end: the run trains through the rounding, its checkpoint is
    plain fp32, and kdrun-export --int8 writes the int8 model and measures it."""
    run_kdrun(tmp_path, *TINY, "strategy=kd", "student.qat=true", "epochs=2")
    run = only_run_dir(tmp_path)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"].keys() == \
        build_model("cnn_student", 1, 8, 10).state_dict().keys()
    proc = run_kdrun(tmp_path, "--help")  # the student group documents the key
    assert "qat" in proc.stdout
    from kdrun.cli.export import main as kdrun_export

    assert kdrun_export([str(run), "--int8"]) == 0
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["config"]["student"]["qat"] is True
    int8 = card["artefacts"]["int8"]
    assert "ranges from quantization-aware training" in int8["quantization"]
    # Quantized over the ranges it trained with, the int8 file scores what the run measured in training.
    recorded = json.loads((run / "metrics.json").read_text())["final_test_acc"]
    assert abs(int8["accuracy"] - recorded) <= 0.6, (int8["accuracy"], recorded)  # 2 of 360 images


def _with_an_outlier_channel(checkpoint: Path, out: Path) -> None:
    """results/qat/outlier.py: one conv1 channel 100x wider, the same function; the case where
    post-training int8 loses points."""
    script = Path(__file__).parents[1] / "results" / "qat" / "outlier.py"
    spec = importlib.util.spec_from_file_location("outlier", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.with_an_outlier_channel(checkpoint, out, 100.0)


@pytest.mark.slow
def test_qat_recovers_int8_accuracy_that_post_training_quantization_loses(tmp_path):
    from kdrun.deploy.ship import ship_run

    recipe = ["experiment=quickstart", "dataset.augment.crop_padding=0", "optim.schedule=constant",
              "trainer.progress=false"]
    run_kdrun(tmp_path, *recipe, "strategy=scratch", "hydra.run.dir=dense")
    outlier = tmp_path / "outlier.pt"
    _with_an_outlier_channel(tmp_path / "dense" / "checkpoints" / "last.pt", outlier)
    run_kdrun(tmp_path, "-m", *recipe, "strategy=scratch", f"student.weights={outlier}", "student.qat=false,true",
              "epochs=2", "hydra.sweep.dir=finetune")
    int8 = {}
    for job, qat in ((0, False), (1, True)):
        card = ship_run(tmp_path / "finetune" / str(job), tmp_path / f"export{job}", "onnx", True, False)
        int8[qat] = card["artefacts"]["int8"]
    post_training = int8[False]
    assert post_training["accuracy_drop"] > 1.0, post_training  # the case QAT is for
    assert int8[True]["accuracy"] > post_training["accuracy"] + 1.0, (int8[True], post_training)
    trained = json.loads((tmp_path / "finetune" / "1" / "metrics.json").read_text())["final_test_acc"]
    assert abs(int8[True]["accuracy"] - trained) <= 0.6  # deployed under the rounding it trained with
