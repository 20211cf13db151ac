"""Hinton et al. (2015)'s omitted-class experiment (kdrun/report/omitted_class.py, make reproduce-hinton-omit):
the output-bias correction against the model's own bias, b chosen on validation, and the target end to end
on digits in a shortened form."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import KDRUN, run_kdrun
from kdrun.sources.checkpoint import save_checkpoint
from kdrun.deploy.student import model_from_checkpoint
from kdrun.sources.models import build_model
from kdrun.report.hinton import errors_from_accuracy
from kdrun.report.omitted_class import choose_bias, count_errors, main, shifted_logits

REPO = Path(__file__).resolve().parents[1]
# digits stands in for Fashion-MNIST: 600 training images (the presets hold out 1/12 more as validation).
TINY = ["dataset=digits", "dataset.limit_train=600", "student.hidden=[24,24]", "trainer.progress=false"]


def test_raising_the_logit_is_raising_the_output_bias():
    torch.manual_seed(0)
    model = build_model("mlp", 1, 8, 10, {"hidden": (16,)}).eval()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias[[3, 5]] += 2.5  # the paper's correction, applied to the weights themselves
        raised = model(x)
    assert torch.allclose(shifted_logits(logits, [3, 5], 2.5), raised, atol=1e-6)
    assert not torch.equal(shifted_logits(logits, [3], 0.0).argmax(1), shifted_logits(logits, [3], 50.0).argmax(1))


def test_a_checkpoint_reads_back_at_its_own_widths(tmp_path):
    # 800 hidden units: wider than the MLP's default, so only the checkpoint's options can rebuild it.
    model = build_model("mlp", 1, 8, 10, {"hidden": (800, 30), "dropout": 0.5}).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = model_from_checkpoint(tmp_path / "m.pt")
    x = torch.rand(4, 1, 8, 8)
    assert loaded.options == {"hidden": [800, 30], "dropout": 0.5} and torch.equal(loaded(x), model(x))


def test_errors_and_the_chosen_bias_against_a_hand_count():
    # Four images; class 2 is the omitted one, its logit 3 below the winner on the two images of class 2.
    logits = torch.tensor([[5.0, 0.0, 2.0], [0.0, 5.0, 2.0], [5.0, 0.0, 2.0], [0.0, 5.0, 4.5]])
    labels = torch.tensor([0, 1, 2, 2])
    assert count_errors(logits, labels, [2], 0.0) == (2, 2)
    assert count_errors(logits, labels, [2], 1.0) == (1, 1)  # the fourth image: 5.5 > 5
    assert count_errors(logits, labels, [2], 3.5) == (2, 0)  # the third is right, the first two now wrong
    # b = 1 and b = 2 give one error each, fewer than 0, 3.5 or 10 (two each): the smallest of the best.
    assert choose_bias(logits, labels, [2], grid=(0.0, 1.0, 2.0, 3.5, 10.0)) == 1.0


@pytest.mark.slow
def test_the_omitted_class_target_runs_end_to_end_in_a_shortened_form(tmp_path):
    """`make reproduce-hinton-omit` on digits, tiny: the teacher, both student sweeps, the table."""
    # fp32: the counts below must equal metrics.json's to the image, and bf16's rounding may tie differently
    tiny = f"dataset.limit_train=600 student.hidden=[24,24] device.precision=fp32 paths.outputs={tmp_path}/outputs"
    proc = subprocess.run(
        ["make", "-C", str(REPO), "reproduce-hinton-omit", "REPRO_DATA=dataset=digits", f"REPRO_SCALE={tiny} epochs=2",
         f"HINTON_TEACHER_SCALE={tiny} epochs=3", f"CPU_REPRO_OUT={tmp_path}", f"HINTON_OMIT_OUT={tmp_path}/table",
         f"PY={sys.executable}", f"KDRUN={KDRUN}"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "table" / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert sorted((r["role"], r["seed"]) for r in runs) == [
        ("kd", "0"), ("kd", "1"), ("kd", "2"), ("scratch", "0"), ("scratch", "1"), ("scratch", "2"), ("teacher", "0")]
    for run in runs:
        metrics = json.loads((Path(run["run"]) / "metrics.json").read_text())
        n, n3 = int(run["test_images"]), int(run["omitted_test_images"])
        assert run["omitted"] == "3" and 0 < n3 < n
        # Uncorrected, the counts are the run's own metrics.json: the same model, the same test split.
        assert int(run["test_errors"]) == errors_from_accuracy(metrics["final_test_acc"], n)
        assert int(run["omitted_errors"]) == errors_from_accuracy(metrics["per_class_test_acc"]["3"], n3)
        # b is chosen on validation: never more validation errors than without it.
        assert int(run["val_errors_corrected"]) <= int(run["val_errors"])
    teacher = next(r for r in runs if r["role"] == "teacher")
    assert float(teacher["bias"]) == 0 and teacher["test_errors"] == teacher["test_errors_corrected"]
    scratch = [r for r in runs if r["role"] == "scratch"]
    assert all(int(r["omitted_errors"]) == int(r["omitted_test_images"]) for r in scratch)  # it never saw a 3
    table = (tmp_path / "table" / "table.md").read_text()
    assert "| teacher | 1 |" in table and "| scratch | 3 |" in table and "| kd | 3 |" in table


def test_a_folder_without_omitted_class_runs_is_refused_in_one_line(tmp_path, capsys):
    run_kdrun(tmp_path, "experiment=hinton_student", "strategy=scratch", *TINY, "epochs=1", "hydra.run.dir=plain")
    assert main([str(tmp_path / "plain"), "--out", str(tmp_path / "table")]) == 2
    err = capsys.readouterr().err
    assert "omits a class (dataset.omit_classes=[...])" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "table").exists()
