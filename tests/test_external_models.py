"""Models beyond the zoo: torchvision, timm and `_target_` models, pretrained weights and teachers,
feature terms between named layers, and `kdrun-layers`. Offline: weights are files the tests write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torchvision.models.feature_extraction import create_feature_extractor

from conftest import KDRUN, only_run_dir, read_jsonl, run_kdrun
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.sources.data import DatasetSplits
from kdrun.errors import ConfigError
from kdrun.sources.model_sources import build_configured
from kdrun.sources.models import build_model
from kdrun.sources.models.external import InputNorm
from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import build_feature_terms
from kdrun.methods.terms.feature.hint import hint_loss
from kdrun.methods.terms.feature.stages import FeatureContext

# 64x64 RGB, 3 classes, a few dozen images: one step of a torchvision pair on a CPU.
SMALL = ["dataset=synthetic", "dataset.image_size=64", "dataset.num_classes=3", "dataset.train_size=32",
         "dataset.test_size=16", "dataset.augment.crop_padding=0", "epochs=1", "batch_size=32",
         "trainer.progress=false", "device=cpu"]
TORCHVISION_PAIR = ["teacher=torchvision", "teacher.arch=resnet18", "student=torchvision",
                    "student.arch=mobilenet_v3_small"]


def fake_data(classes=3, channels=3, size=64) -> DatasetSplits:
    x = torch.zeros(4, channels, size, size, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.long)
    return DatasetSplits("synthetic", x, y, x, y, classes, (0.5,) * channels, (0.25,) * channels)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow  # whole torchvision runs: ~30 s on a shared CPU
def test_pretrained_torchvision_teacher_is_evaluated_not_trained_and_cached(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18_3.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    run_kdrun(tmp_path, *SMALL, *TORCHVISION_PAIR, f"teacher.weights={weights}")
    run_dir = only_run_dir(tmp_path)
    summary = metrics(run_dir)
    assert summary["teacher_source"] == "pretrained" and summary["teacher_arch"] == "torchvision:resnet18"
    entry = tmp_path / summary["teacher_path"]
    # no training happened: the entry holds the evaluated weights, no training state, no metrics
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry.json", "recipe.json", "teacher.pt"]
    cached = load_checkpoint(entry)
    assert cached["epoch"] == 0 and cached["test_acc"] == summary["teacher_test_acc"]
    original = torch.load(weights, weights_only=True)
    assert torch.equal(cached["state_dict"]["net.layer3.0.conv1.weight"], original["layer3.0.conv1.weight"])

    # the student's checkpoint names its architecture well enough to rebuild it
    student = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert student["model"]["arch"] == "torchvision:mobilenet_v3_small"
    rebuilt = build_model(student["model"]["arch"], 3, 64, 3)
    rebuilt.load_state_dict(student["state_dict"])

    # a second run reads the cached evaluation
    run_kdrun(tmp_path, *SMALL, *TORCHVISION_PAIR, f"teacher.weights={weights}", "seed=1")
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    assert metrics(runs[-1])["teacher_source"] == "cache"


@pytest.mark.slow  # whole torchvision runs: ~30 s on a shared CPU
def test_a_head_that_does_not_fit_is_refused_by_name_or_fine_tuned(tmp_path):
    weights = tmp_path / "resnet18_1000.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    proc = run_kdrun(tmp_path, *SMALL, *TORCHVISION_PAIR, f"teacher.weights={weights}", check=False)
    assert proc.returncode == 2
    message = " ".join((proc.stdout + proc.stderr).split())
    assert "1000-class head" in message and "has 3 classes" in message and "teacher.finetune_epochs=N" in message
    assert "Traceback" not in proc.stderr

    run_kdrun(tmp_path, *SMALL, *TORCHVISION_PAIR, f"teacher.weights={weights}", "teacher.finetune_epochs=1")
    summary = metrics(sorted((tmp_path / "outputs" / "runs").glob("*/*"))[-1])  # after the refused run
    assert summary["teacher_source"] == "finetuned"
    teacher = load_checkpoint(tmp_path / summary["teacher_path"])
    assert teacher["model"]["num_classes"] == 3 and teacher["epoch"] == 1


def test_a_target_student_is_built_through_instantiate_with_the_class_count(tmp_path):
    (tmp_path / "tinynets.py").write_text(
        "import torch.nn as nn\n"
        "class TinyNet(nn.Sequential):\n"
        "    def __init__(self, width, num_classes):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"}
    args = ["dataset=digits", "teacher=mlp", "teacher.epochs=1", "student=custom", "student._target_=tinynets.TinyNet",
            "+student.width=16", "epochs=1", "trainer.progress=false", "device=cpu"]
    proc = subprocess.run([str(KDRUN), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = only_run_dir(tmp_path)
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert payload["model"]["arch"] == 'custom:tinynets.TinyNet{"width":16}'
    assert payload["state_dict"]["net.3.weight"].shape == (10, 16)  # digits' 10 classes reached the class
    assert metrics(run_dir)["params"] == 64 * 16 + 16 + 16 * 10 + 10


@pytest.mark.slow  # whole torchvision runs: ~30 s on a shared CPU
def test_a_hint_between_named_layers_of_two_torchvision_models(tmp_path):
    run_kdrun(tmp_path, *SMALL, *TORCHVISION_PAIR, "teacher.epochs=1", "loss.terms.hint.weight=1",
              "loss.terms.hint.student_layer=features.3", "loss.terms.hint.teacher_layer=layer2")
    record = read_jsonl(only_run_dir(tmp_path) / "metrics.jsonl")[0]
    assert record["loss_hint"] > 0


def hint_between(student_layer: str, teacher_layer: str, weight: float = 1.0):
    return OmegaConf.create({"loss": {"terms": {"hint": {"weight": weight, "student_layer": student_layer,
                                                         "teacher_layer": teacher_layer}}}})


def test_named_layer_features_match_torchvision_feature_extraction():
    torch.manual_seed(0)
    context = FeatureContext("torchvision:mobilenet_v3_small", "torchvision:resnet18", (3, 64, 3))
    terms = build_feature_terms(hint_between("features.3", "layer2", weight=2.0), context)
    hint = terms.terms[0]
    assert hint.refs == ("features.3", "layer2")
    student = build_model("torchvision:mobilenet_v3_small", 3, 64, 3).eval()
    teacher = build_model("torchvision:resnet18", 3, 64, 3).eval()
    terms = terms.tap(student, teacher).eval()
    x = torch.randn(2, 3, 64, 64)
    y = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        s_feats, s_logits = student.forward_features(x)
        t_feats, t_logits = teacher.forward_features(x)
        got = terms(TermInputs(s_logits, t_logits, y, 1, None, terms.outputs(s_feats, 0), terms.outputs(t_feats, 1)))
        s_direct = create_feature_extractor(student.net, {"features.3": "f"})(x)["f"]
        t_direct = create_feature_extractor(teacher.net, {"layer2": "f"})(x)["f"]
        assert s_direct.shape[1:] == (24, 8, 8) and t_direct.shape[1:] == (128, 8, 8)
        expected = 2.0 * hint_loss(hint.regressor(s_direct), t_direct)
    torch.testing.assert_close(got["hint"], expected)


def test_an_unknown_layer_name_lists_the_layers():
    context = FeatureContext("torchvision:resnet18", "torchvision:resnet18", (3, 64, 3))
    with pytest.raises(ConfigError, match=r"no layer 'layer9'.*layer1, layer2, layer3, layer4.*kdrun-layers"):
        build_feature_terms(hint_between("layer9", "layer2"), context)


def test_input_norm_re_normalises_dataset_inputs_to_the_weights_statistics():
    norm = InputNorm(1, 3)
    norm.set_statistics((0.3,), (0.2,), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    raw = torch.rand(2, 1, 4, 4)
    dataset_normalised = (raw - 0.3) / 0.2
    expected = (raw.expand(-1, 3, -1, -1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(dataset_normalised), expected)


def test_torchvision_weights_by_name_come_through_the_weights_api(tmp_path, monkeypatch):
    # The torch hub cache already holding the file is what a user's earlier download leaves: no network.
    state = torchvision.models.resnet18().state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    data = fake_data()
    cfg = OmegaConf.create({"source": "torchvision", "arch": "resnet18", "weights": "IMAGENET1K_V1",
                            "input_stats": "auto"})
    with pytest.raises(ConfigError, match="1000-class head, but dataset synthetic has 3 classes"):
        build_configured(cfg, data, "teacher", new_head_ok=False)
    model = build_configured(cfg, data, "student")  # a student may start with a new head
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    expected_scale = torch.tensor(0.25) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(model.input_norm.scale.flatten(), expected_scale)
    bad = OmegaConf.merge(cfg, {"weights": "IMAGENET9K"})
    with pytest.raises(ConfigError, match="no weights 'IMAGENET9K'; allowed: IMAGENET1K_V1, DEFAULT"):
        build_configured(bad, data, "teacher")


def test_a_student_initialised_from_a_state_dict(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v3_small(num_classes=3).state_dict()
    path = tmp_path / "student.pt"
    torch.save(state, path)
    cfg = OmegaConf.create({"source": "torchvision", "arch": "mobilenet_v3_small", "weights": str(path)})
    model = build_configured(cfg, fake_data(), "student")
    assert all(torch.equal(v, state[k]) for k, v in model.net.state_dict().items())
    assert model.input_norm.is_identity()  # a file's statistics are unknown: the dataset's are kept


def test_timm_models_are_built_by_name():
    timm = pytest.importorskip("timm")
    model = build_model("timm:test_resnet", 1, 32, 5)
    assert model.stage_layers == ["layer1", "layer2", "layer3", "layer4"]
    features, logits = model.forward_features(torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 5) and len(features) == 4
    assert isinstance(model.net, timm.models.ResNet)


def test_kdrun_layers_lists_names_shapes_and_stages(tmp_path):
    layers = Path(sys.executable).with_name("kdrun-layers")
    proc = subprocess.run([str(layers), "dataset=digits", "student=torchvision", "student.arch=resnet18",
                           "teacher=cnn_teacher"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    assert "student torchvision:resnet18" in proc.stdout and "teacher cnn_teacher" in proc.stdout
    assert any("layer2" in line and "128x1x1" in line and "stage 1" in line for line in proc.stdout.splitlines())
    assert list(tmp_path.iterdir()) == []  # it writes nothing
    # Issue 23 item 17: stages and top-level layers by default (mobilenet_v3_small's tree was 413 lines)
    assert "layer2.0.conv1" not in proc.stdout and len(proc.stdout.splitlines()) < 40
    assert any("(stage 1)" in line and "512x2x2" in line for line in proc.stdout.splitlines())  # a zoo model's
    full = subprocess.run([str(layers), "dataset=digits", "student=torchvision", "student.arch=resnet18",
                           "teacher=cnn_teacher", "--all"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert full.returncode == 0 and "layer2.0.conv1" in full.stdout, full.stderr
    assert len(full.stdout.splitlines()) > len(proc.stdout.splitlines()) + 40


def test_an_unknown_external_model_is_refused_before_any_teacher_trains(tmp_path):
    for args, expected in ((["student=torchvision", "student.arch=resnet999"], "unknown torchvision classification model 'resnet999'"),
                           (["student=custom"], "student=custom needs the class to build: student._target_="),
                           (["teacher=custom", "teacher._target_=nope.Net"], "_target_='nope.Net' cannot be imported")):
        proc = run_kdrun(tmp_path, "dataset=digits", "teacher=mlp", "epochs=1", "trainer.progress=false", *args,
                         check=False)
        assert proc.returncode == 2 and expected in " ".join(proc.stderr.split()), proc.stdout + proc.stderr
    assert not (tmp_path / "outputs" / "teachers").exists()
