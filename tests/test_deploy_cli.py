"""kdrun-export, kdrun-eval --robustness and kdrun-report --deploy on a real (tiny) digits run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, only_run_dir, run_kdrun

BIN = Path(sys.executable).parent
INT8_BOUND = 3.0  # points of test accuracy int8 may lose against fp32 on digits (360 test images)


def run_tool(tool: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def widest_line_but_paths(output: str, *folders: Path) -> int:
    """The widest line of the tables and messages; the lines naming files are as long as their paths
    (unwrapped, so that they can be copied)."""
    return max(len(line) for line in output.splitlines() if not any(str(f) in line for f in folders))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        run_kdrun(cwd, "experiment=quickstart", "strategy=scratch", "epochs=8", "trainer.progress=false")
    return only_run_dir(cwd)


@pytest.fixture(scope="module")
def onnx_export(run_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("onnx")
    proc = run_tool("kdrun-export", run_dir, "--int8", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_onnx_export_agrees_with_pytorch_on_the_test_split(run_dir, onnx_export):
    out, _ = onnx_export
    check = json.loads((out / "model_card.json").read_text())["artefacts"]["onnx"]["check"]
    assert check["images"] == 360 and check["top1_differs"] == 0 and check["max_abs_logit_diff"] <= 1e-3
    assert json.loads((out / "model_card.json").read_text())["artefacts"]["onnx"]["opset"] == 18


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_export_round_trip_agrees_with_pytorch_on_the_test_split(run_dir, fmt, tmp_path):
    proc = run_tool("kdrun-export", run_dir, "--format", fmt, "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = json.loads((tmp_path / "model_card.json").read_text())
    check = card["artefacts"][fmt]["check"]
    assert check["images"] == 360 and check["top1_differs"] == 0 and check["max_abs_logit_diff"] <= 1e-3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert check["accuracy"] == pytest.approx(metrics["final_test_acc"], abs=1e-3)
    assert card["input"]["dtype"] == "uint8" and card["classes"] == [str(i) for i in range(10)]
    assert card["config"]["dataset"]["name"] == "digits" and card["teacher"] is None
    assert (tmp_path / f"model{ {'onnx': '.onnx', 'pt2': '.pt2', 'torchscript': '.torchscript.pt'}[fmt]}").is_file()


def test_onnx_takes_raw_images_at_any_batch_size(run_dir, onnx_export):
    import onnxruntime as ort

    from kdrun.deploy.student import load_run

    tmp_path, _ = onnx_export
    run = load_run(run_dir)
    data = run.load_data()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    for n in (1, 7):
        x = data.test_x[:n]
        expected = run.model(((x.float() / 255 - torch.tensor(data.mean).view(1, -1, 1, 1))
                              / torch.tensor(data.std).view(1, -1, 1, 1))).detach().numpy()
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-4)


def test_int8_accuracy_is_measured_and_within_the_bound_of_fp32(onnx_export):
    tmp_path, proc = onnx_export
    int8 = json.loads((tmp_path / "model_card.json").read_text())["artefacts"]["int8"]
    assert int8["fp32_accuracy"] > 80
    assert abs(int8["accuracy_drop"]) <= INT8_BOUND, int8
    assert (tmp_path / "model.int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size
    assert "int8" in proc.stdout


@pytest.mark.slow
def test_kdrun_export_writes_each_run_of_a_sweep(run_dir, tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        shutil.copytree(run_dir, sweep / job)
    proc = run_tool("kdrun-export", sweep, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job in ("0", "1"):
        card = json.loads((tmp_path / "out" / job / "model_card.json").read_text())
        assert card["artefacts"]["onnx"]["check"]["passed"] and (tmp_path / "out" / job / "model.onnx").is_file()


@pytest.mark.slow
def test_kdrun_eval_robustness_writes_a_table_and_a_plot_within_80_columns(run_dir, tmp_path):
    proc = run_tool("kdrun-eval", run_dir, "--robustness", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "robustness.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["clean"]) == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["final_test_acc"],
                                                abs=1e-2)
    assert {"mCA", "jpeg_s5", "fgsm_8_255"} <= set(row)
    assert (tmp_path / "robustness.png").is_file() and (tmp_path / "robustness.svg").is_file()
    assert widest_line_but_paths(proc.stdout, tmp_path, run_dir) <= 80


@pytest.mark.slow
def test_kdrun_report_deploy_adds_size_int8_and_speed_columns(run_dir, tmp_path):
    proc = run_tool("kdrun-report", run_dir, "--deploy", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "comparison.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["flops"]) == 44032  # see test_deploy_units: the cnn_student counted by hand
    for key in ("onnx_int8_kb", "acc_int8", "ms_torch_1t_b1", "ms_onnxruntime_int8_1t_b1",
                "img_s_onnxruntime_1t_b64", "img_s_torch_1t_b64"):
        assert float(row[key]) > 0, key
    assert float(row["weight_sparsity"]) == 0.0  # a dense student; pruning's zeros: test_deploy_units
    assert "deployment" in (tmp_path / "report.md").read_text()
    assert widest_line_but_paths(proc.stdout, tmp_path, run_dir) <= 80


@pytest.mark.slow
def test_a_channel_pruned_distilled_student_trains_exports_and_reports(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        run_kdrun(tmp_path, *TINY, "strategy=kd", "student.prune.kind=channel", "student.prune.amount=0.5")
    run = only_run_dir(tmp_path)
    assert json.loads((run / "metrics.json").read_text())["params"] < 6090 / 2  # cnn_student: 6,090
    proc = run_tool("kdrun-export", run, "--format", "pt2", "--out", tmp_path / "export")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["teacher"]["arch"] == "mlp" and card["artefacts"]["pt2"]["check"]["passed"]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "does not exist"),
    (["{empty}"], "no kdrun run under"),
    (["{run}", "--format", "tflite"], "unknown --format 'tflite'; allowed: onnx, pt2, torchscript"),
])
def test_kdrun_export_bad_inputs_give_a_message_and_status_2(run_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "run": run_dir}
    proc = run_tool("kdrun-export", *(a.format(**paths) for a in args))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stdout + proc.stderr


def test_kdrun_eval_needs_an_evaluation_and_a_run(run_dir, tmp_path):
    proc = run_tool("kdrun-eval", run_dir)
    assert proc.returncode == 2 and "--robustness" in proc.stderr
    proc = run_tool("kdrun-eval", tmp_path, "--robustness")
    assert proc.returncode == 2 and "no runs under" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("student.prune.kind=random", "student.prune.kind: 'random' is not allowed; allowed: none, unstructured, channel"),
    ("student.prune.amount=1.5", "student.prune.amount must be a number in [0, 1), the fraction to remove; got 1.5"),
])
def test_kdrun_refuses_bad_prune_settings_before_any_training(tmp_path, override, message):
    proc = run_kdrun(tmp_path, *TINY, "strategy=kd", "student.prune.kind=channel", override, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "outputs" / "teachers").exists()
