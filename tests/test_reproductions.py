"""The reproduction presets (Hinton et al. 2015, the Keras example) compose and run one step on a tiny
subset; the MLP's model keys; the Hinton error table; the Welch p-value against a hand computation."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
import yaml

from conftest import run_kdrun
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.errors import ConfigError
from kdrun.sources.models import build_model, count_parameters, model_options
from kdrun.report.hinton import errors_from_accuracy, group_rows, read_runs
from kdrun.report.hinton import main as hinton_table
from kdrun.sources.data.datasets import load_dataset
from kdrun.report.significance import welch

# digits stands in for MNIST (not on disk in tests): one step of 128 images (Hinton: batch 128), 100 test images.
TINY_DATA = ["dataset=digits", "dataset.limit_train=128", "dataset.limit_test=100", "epochs=1",
             "trainer.progress=false"]


def test_mlp_widths_and_dropout_are_model_options():
    model = build_model("mlp", 1, 28, 10, {"hidden": (30, 20, 10), "dropout": 0.5, "input_dropout": 0.2})
    assert count_parameters(model) == (784 * 30 + 30) + (30 * 20 + 20) + (20 * 10 + 10) + (10 * 10 + 10)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))  # no dropout at evaluation
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model.eval()(x))  # dropout while training
    assert model_options({"arch": "mlp", "hidden": [8, 8], "dropout": None}) == {"hidden": (8, 8)}


@pytest.mark.parametrize("group, message", [
    ({"arch": "resnet20", "hidden": [8]}, r"student.hidden=\[8\] does not apply to resnet20"),
    ({"arch": "mlp", "dropout": 1.0}, r"student.dropout must be in \[0, 1\)"),
])
def test_model_options_refused_with_a_message(group, message):
    with pytest.raises(ConfigError, match=message):
        model_options(group, "student")


def write_hinton_run(run_dir, dataset: dict, final_test_acc: float) -> None:
    """A finished scratch run of the 30-30 student as kdrun writes it (config.yaml, metrics.json)."""
    run_dir.mkdir(parents=True)
    config = {"name": "hinton_student", "seed": 0, "dataset": dataset, "strategy": {"name": "scratch"},
              "student": {"hidden": [30, 30]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "final_test_acc": final_test_acc}))


def test_hinton_table_counts_digits_test_errors_without_limit_test(tmp_path, capsys):
    write_hinton_run(tmp_path / "runs" / "scratch", {"name": "digits", "limit_test": None}, 90.0)
    assert hinton_table([str(tmp_path / "runs"), "--out", str(tmp_path / "table")]) == 0
    digits_test = len(load_dataset({"name": "digits"}, torch.device("cpu")).test_y)  # the split a run scores on
    rows = group_rows(read_runs(tmp_path / "runs"))
    assert rows[0]["test images"] == digits_test
    assert rows[0]["test errors (mean)"] == round(0.10 * digits_test)


def test_hinton_table_refuses_a_dataset_of_unknown_test_size_in_one_line(tmp_path, capsys):
    write_hinton_run(tmp_path / "runs" / "scratch", {"name": "synthetic", "limit_test": None}, 90.0)
    assert hinton_table([str(tmp_path / "runs"), "--out", str(tmp_path / "table")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'synthetic'" in err and "dataset.limit_test" in err
    assert not (tmp_path / "table").exists()  # a refused command writes nothing


@pytest.mark.slow
def test_hinton_presets_run_a_step_and_the_student_reads_the_teacher_widths(tmp_path):
    run_kdrun(tmp_path, "experiment=hinton_teacher", *TINY_DATA, "student.hidden=[24,24]", "hydra.run.dir=teacher")
    teacher = load_checkpoint(tmp_path / "teacher" / "checkpoints" / "last.pt")
    assert teacher["model"]["options"] == {"hidden": [24, 24], "dropout": 0.5, "input_dropout": 0.2}
    config = yaml.safe_load((tmp_path / "teacher" / "config.yaml").read_text())
    assert config["dataset"]["augment"]["crop_padding"] == 2 and config["optim"]["weight_decay"] == 0
    for extra in (["strategy=scratch"], ["teacher.checkpoint=teacher/checkpoints/last.pt", "T=2.5"]):
        run_kdrun(tmp_path, "experiment=hinton_student", *TINY_DATA, "student.hidden=[30,30]", *extra,
                  f"hydra.run.dir={extra[0].split('=')[0]}")
    metrics = json.loads((tmp_path / "teacher.checkpoint" / "metrics.json").read_text())
    assert metrics["teacher_params"] == count_parameters(build_model("mlp", 1, 8, 10, {"hidden": (24, 24)}))
    assert metrics["params"] == count_parameters(build_model("mlp", 1, 8, 10, {"hidden": (30, 30)}))
    rows = group_rows(read_runs(tmp_path))
    assert [(r["model"], r["trained as"], r["seeds"], r["test images"]) for r in rows] == [
        ("30-30", "scratch", 1, 100), ("30-30", "kd T=2.5", 1, 100), ("24-24", "teacher", 1, 100)]
    assert rows[0]["test errors (mean)"] == errors_from_accuracy(
        json.loads((tmp_path / "strategy" / "metrics.json").read_text())["final_test_acc"], 100)


@pytest.mark.slow
def test_keras_preset_runs_a_step(tmp_path):
    run_kdrun(tmp_path, "experiment=keras_mnist", *TINY_DATA, "teacher.epochs=1", "hydra.run.dir=kd")
    config = yaml.safe_load((tmp_path / "kd" / "config.yaml").read_text())
    assert (config["optim"]["name"], config["optim"]["lr"], config["optim"]["weight_decay"]) == ("adamw", 1e-3, 0)
    terms = config["loss"]["terms"]
    assert (terms["ce"]["weight"], terms["kd"]["weight"], terms["kd"]["T"]) == (0.1, 0.9, 10.0)
    assert config["batch_size"] == 64 and config["teacher"]["arch"] == "cnn_teacher"
    assert json.loads((tmp_path / "kd" / "metrics.json").read_text())["status"] == "completed"


def test_errors_count_misclassified_images():
    assert errors_from_accuracy(99.33, 10_000) == 67 and errors_from_accuracy(98.54, 10_000) == 146 and errors_from_accuracy(100.0, 10) == 0


def _t_cdf(t: float, df: float) -> float:
    """Student's t distribution function by Simpson's rule over its density (a direct computation)."""
    density = lambda x: math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (  # noqa: E731
        1 + x * x / df) ** (-(df + 1) / 2)
    n, a = 20_000, 0.0
    h = (abs(t) - a) / n
    area = density(a) + density(abs(t)) + sum((4 if i % 2 else 2) * density(a + i * h) for i in range(1, n))
    half = area * h / 3
    return 0.5 + half if t >= 0 else 0.5 - half


def test_welch_p_value_against_a_hand_computation():
    distilled, scratch = [94.1, 95.0, 94.6, 95.3], [92.8, 93.9, 93.1]
    va, vb = statistics.variance(distilled), statistics.variance(scratch)
    se2 = va / 4 + vb / 3
    t = (statistics.fmean(distilled) - statistics.fmean(scratch)) / math.sqrt(se2)
    df = se2 ** 2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)  # Welch–Satterthwaite
    p = 2 * (1 - _t_cdf(t, df))
    result = welch(distilled, scratch)
    assert result.delta == pytest.approx(statistics.fmean(distilled) - statistics.fmean(scratch))
    assert result.p_value == pytest.approx(p, rel=1e-6)
    assert result.text() == "+1.48 (p=0.022)"
    assert math.isnan(welch([1.0], [2.0, 3.0]).p_value) and math.isnan(welch([1.0, 1.0], [2.0, 2.0]).p_value)
