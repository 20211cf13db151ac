"""The run explains itself: a teacher not clearly better than its student, or a student that underfits,
is named at the run's end in one line with the numbers and what usually helps."""

from __future__ import annotations

import json

from kdrun.console import console
from kdrun.report.tables import print_run_summary
from kdrun.report.teacher_check import run_warning, underfit_warning

SUMMARY = {"strategy": "kd", "arch": "cnn_student", "dataset": "digits", "seed": 0, "params": 6090, "size_mb": 0.02,
           "final_test_acc": 90.0, "best_test_acc": 91.0, "teacher_arch": "cnn_teacher", "teacher_params": 1203210,
           "teacher_size_mb": 4.59}


def test_a_teacher_within_a_point_of_its_student_is_not_clearly_better():
    assert run_warning({**SUMMARY, "teacher_test_acc": 91.5}) is None
    warning = run_warning({**SUMMARY, "teacher_test_acc": 90.5})
    assert "(90.50%) is not clearly better than the student it distilled, cnn_student (90.00%)" in warning


def test_a_student_whose_train_accuracy_trails_its_test_accuracy_or_falls_underfits():
    assert underfit_warning(SUMMARY, [{"train_acc": 70.0}, {"train_acc": 88.0}]) is None
    trails = underfit_warning(SUMMARY, [{"train_acc": 60.0}, {"train_acc": 75.0}])
    assert "last train accuracy (75.00%) is 15.0 points below its test accuracy (90.00%)" in trails
    assert "more epochs" in trails
    falls = underfit_warning(SUMMARY, [{"train_acc": 95.0}, {"train_acc": 86.0}])
    assert "fell from 95.00% to 86.00%" in falls
    assert underfit_warning({**SUMMARY, "mixup": 0.4}, [{"train_acc": 40.0}]) is None  # two labels per image


def test_the_runs_end_prints_each_warning_in_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "train_acc": a})
                                                      for e, a in ((1, 60.0), (2, 70.0))) + "\n")
    with console.capture() as captured:
        print_run_summary({**SUMMARY, "teacher_test_acc": 90.2}, tmp_path)
    lines = [line for line in captured.get().splitlines() if line.startswith("warning:")]
    assert len(lines) == 2 and "not clearly better" in lines[0] and "underfits" in lines[1]
