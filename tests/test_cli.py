"""The `kdrun` command end to end, as a subprocess, on the offline digits dataset."""

from __future__ import annotations

import collections
import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import KDRUN, TINY, only_run_dir, read_jsonl
from kdrun.sources.checkpoint import load_checkpoint, save_checkpoint
from kdrun.sources.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_a_digits_run_writes_every_file_of_the_contract(kdrun, tmp_path):
    proc = kdrun(*TINY, "epochs=2", "T=8")
    run_dir = only_run_dir(tmp_path)
    assert run_dir.parent.parent == tmp_path / "outputs" / "runs"
    assert run_dir.name.endswith("_kd_cnn_student")

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["loss"]["terms"]["kd"]["T"] == 8.0 and config["trainer"]["epochs"] == 2  # resolved, not ${T}

    epochs = read_jsonl(run_dir / "metrics.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    for record in epochs:
        for key in ("loss", "loss_ce", "loss_kd", "train_acc", "test_acc", "lr", "seconds", "images_per_s"):
            assert key in record, key
        assert record["loss"] == pytest.approx(record["loss_ce"] + record["loss_kd"])
        assert 0 <= record["test_acc"] <= 100

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_test_acc"] == epochs[-1]["test_acc"]
    assert summary["best_test_acc"] == max(e["test_acc"] for e in epochs)
    assert summary["params"] == sum(p.numel() for p in build_model("cnn_student", 1, 8, 10).parameters())
    assert 0 < summary["teacher_test_acc"] <= 100 and summary["teacher_arch"] == "mlp"
    assert summary["wall_time_s"] > 0 and summary["T"] == 8.0

    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run_dir / "checkpoints" / name)
        meta = ckpt["model"]
        assert {k: meta[k] for k in ("arch", "num_classes", "in_channels", "image_size")} == {
            "arch": "cnn_student", "num_classes": 10, "in_channels": 1, "image_size": 8}
        assert set(meta) == {"arch", "num_classes", "in_channels", "image_size", "input_mean", "input_std"}
        assert len(meta["input_mean"]) == 1 and 0 < meta["input_std"][0] < 1  # the normalisation it trained with
        model = build_model("cnn_student", 1, 8, 10)
        model.load_state_dict(ckpt["state_dict"])
    assert "test acc" in proc.stdout and str(run_dir.name) in proc.stdout.replace("\n", "")


def test_a_two_job_temperature_sweep_writes_a_summary_with_two_rows(kdrun, tmp_path):
    kdrun("-m", *TINY, "T=1,4")
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["T"] for r in rows] == ["1", "4"]
    assert all(r["status"] == "completed" and 0 <= float(r["final_test_acc"]) <= 100 for r in rows)
    assert all(float(r["best_test_acc"]) >= float(r["final_test_acc"]) for r in rows)
    assert (sweep_dir / "summary.md").read_text().count("\n") == 4  # header, rule, two rows
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 2


def test_a_failed_job_is_a_row_not_a_lost_sweep(kdrun, tmp_path):
    # A value that is wrong on its face (T=-1) stops the sweep before any job (tests/test_trust.py);
    # one found wrong only once the data are loaded fails its job alone.
    proc = kdrun("-m", *TINY, "batch_size=100000,64", check=False)
    assert proc.returncode == 1
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(r["batch_size"], r["status"]) for r in rows] == [("100000", "failed"), ("64", "completed")]
    assert "larger than the training split" in rows[0]["error"]


def test_a_teacher_is_trained_once_and_reused(kdrun, tmp_path):
    first = kdrun(*TINY)
    assert "training it first" in first.stderr
    second = kdrun(*TINY, "seed=1", "T=2")  # another student seed and T: same teacher
    assert "from cache" in second.stderr and "training it first" not in second.stderr
    runs = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    summaries = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert [s["teacher_source"] for s in summaries] == ["trained", "cache"]
    assert summaries[0]["teacher_path"] == summaries[1]["teacher_path"]
    assert summaries[0]["teacher_test_acc"] == summaries[1]["teacher_test_acc"]
    assert len(list((tmp_path / "outputs" / "teachers").glob("digits/mlp/*/teacher.pt"))) == 1
    third = kdrun(*TINY, "teacher.epochs=2")  # another recipe: another teacher
    assert "training it first" in third.stderr


def test_a_teacher_checkpoint_is_loaded_from_a_path(kdrun, tmp_path):
    teacher = build_model("mlp", 1, 8, 10)
    save_checkpoint(tmp_path / "t.pt", teacher, test_acc=0.0)
    kdrun(*TINY, f"teacher.checkpoint={tmp_path / 't.pt'}")
    summary = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert summary["teacher_source"] == "checkpoint"
    assert not (tmp_path / "outputs" / "teachers").exists()


# --- bad input: a clear message, exit status 2 for ours, never a traceback ----------------------


def assert_clean_error(proc, *fragments: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    flat = " ".join(text.split())
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in:\n{text}"


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["teacher=resnet21"], ["teacher=resnet21: no such teacher option; did you mean teacher=resnet",
                                "cnn_teacher"]),
        (["student=tiny"], ["student=tiny: no such student option", "resnet8x4"]),
        (["dataset=svhn"], ["dataset=svhn: no such dataset option", "digits"]),
        (["-m", "strategy=kd,kdd"], ["strategy=kdd: no such strategy option; did you mean strategy=kd?",
                                      "(options: born_again, kd, multi_teacher, online, scratch, self)"]),
        (["teacher=resnet999"], ["teacher=resnet999: no such teacher option; did you mean teacher=resnet"]),
        (["experiment=null"], ["experiment=null: a group takes one of its options", "quickstart"]),
        (["T=0"], ["T must be > 0, got 0"]),
        (["loss.terms.ce.weight=-1"], ["loss.terms.ce.weight must be >= 0, got -1"]),
        (["batch_size=0"], ["batch_size must be >= 1, got 0"]),
        (["loss.tempreature=3"], ["tempreature"]),
    ],
)
def test_bad_command_lines_are_named(kdrun, args, fragments):
    proc = kdrun(*TINY, *args, check=False)
    assert_clean_error(proc, *fragments)
    # One line, on stderr: `kdrun T=-1 2>/dev/null` shows nothing (issue 23 item 13).
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and proc.stdout == "", proc.stderr


def test_a_missing_dataset_offline_says_where_it_looked_and_what_works(kdrun, tmp_path):
    proc = kdrun("dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false",
                 "epochs=1", check=False)
    assert proc.returncode == 2
    assert_clean_error(proc, str(tmp_path / "nowhere"), "dataset.root", "dataset=digits")


def test_a_teacher_checkpoint_for_another_class_count_is_refused(kdrun, tmp_path):
    save_checkpoint(tmp_path / "t100.pt", build_model("mlp", 1, 8, 100))
    proc = kdrun(*TINY, f"teacher.checkpoint={tmp_path / 't100.pt'}", check=False)
    assert_clean_error(proc, "has 100 classes, dataset digits has 10")


def test_a_teacher_checkpoint_for_other_input_channels_is_refused(kdrun, tmp_path):
    save_checkpoint(tmp_path / "rgb.pt", build_model("mlp", 3, 8, 10))
    proc = kdrun(*TINY, f"teacher.checkpoint={tmp_path / 'rgb.pt'}", check=False)
    assert_clean_error(proc, "takes 3 input channels, dataset digits has 1")


def test_a_file_that_is_not_a_kdrun_checkpoint_is_refused(kdrun, tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    assert_clean_error(kdrun(*TINY, f"teacher.checkpoint={tmp_path / 'foreign.pt'}", check=False),
                       "is not a kdrun checkpoint")
    assert_clean_error(kdrun(*TINY, f"teacher.checkpoint={tmp_path / 'text.pt'}", check=False),
                       "is not a kdrun checkpoint: kdrun checkpoints are the zip archives")


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_a_dataset_root_that_is_a_file_is_named_in_one_line(kdrun, tmp_path, dataset):
    """Issue 23 item 15: it said "download failed" and printed NotADirectoryError twice."""
    (tmp_path / "afile").write_text("not a folder")
    proc = kdrun(*TINY, f"dataset={dataset}", "dataset.root=afile", check=False)
    assert_clean_error(proc, f"dataset.root=afile is a file, not a folder; give the folder that holds (or will "
                             f"hold) the {dataset} files")
    assert proc.returncode == 2 and "download" not in proc.stderr and "NotADirectoryError" not in proc.stderr


def test_a_plain_state_dict_as_teacher_checkpoint_points_to_teacher_weights(kdrun, tmp_path):
    """Issue 23 item 10: the refusal named no way to use the file."""
    weights = tmp_path / "state_dict.pt"
    torch.save(build_model("mlp", 1, 8, 10).state_dict(), weights)
    proc = kdrun(*TINY, f"teacher.checkpoint={weights}", check=False)
    assert_clean_error(proc, "is not a kdrun checkpoint but a plain state_dict",
                       f"pass a state_dict as teacher.weights={weights}")
    assert proc.returncode == 2
    kdrun(*TINY, f"teacher.weights={weights}")  # where the message points, the file is taken


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_weights_file_that_is_not_a_state_dict_is_refused_without_advice_to_load_it_unsafely(kdrun, tmp_path,
                                                                                                 role):
    """Issue 23 item 11: torch's advice to retry with weights_only=False, and its UserWarning, reached the user."""
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # pickles a torch class
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(collections.Counter(a=1), protocol=4))
    for name in ("module.pt", "plain.pkl"):
        proc = kdrun(*TINY, f"{role}.weights={tmp_path / name}", check=False)
        assert_clean_error(proc, "was refused", "kdrun never runs code from a weights file")
        text = proc.stdout + proc.stderr
        for unsafe in ("weights_only", "safe_globals", "trusted source", "Warning"):
            assert unsafe not in text, text
        assert proc.returncode == 2


@pytest.mark.slow
def test_a_plain_pip_install_runs_from_any_directory(tmp_path):
    """conf/ is packaged: a non-editable install composes its configs from elsewhere."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    probe = ("from hydra import compose, initialize_config_module\n"
             "with initialize_config_module(config_module='kdrun.conf', version_base='1.3'):\n"
             "    cfg = compose(config_name='config', overrides=['experiment=quickstart'])\n"
             "import kdrun; print(kdrun.__file__, cfg.dataset.name, cfg.teacher.arch)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout
    assert str(target) in out and "digits cnn_teacher" in out


def test_each_epoch_logs_the_learning_rate_it_trained_with(kdrun, tmp_path):
    """The lr at the epoch's first step: epoch 1 of a 1-epoch cosine run trained at the base rate, not the
    0.0 the schedule reaches once the epoch is over."""
    kdrun(*TINY, "optim.lr=0.03")
    (record,) = read_jsonl(only_run_dir(tmp_path) / "metrics.jsonl")
    assert record["lr"] == pytest.approx(0.03)


def test_the_readmes_tab_completion_command_installs_a_working_completion_in_bash(tmp_path):
    """Issue 23 item 18: `eval "$(kdrun -sc install=bash)"` was refused as an unknown key 'install'."""
    readme = (ROOT / "README.md").read_text()
    assert 'eval "$(kdrun -sc install=bash)"' in readme
    script = ('eval "$(kdrun -sc install=bash)" || exit 9\n'
              'COMP_LINE="kdrun teacher=resn"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1\n'
              'hydra_bash_completion\n'
              'echo "${COMPREPLY[@]}"\n'
              'complete -p kdrun\n')
    env = {**os.environ, "PATH": f"{KDRUN.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "teacher=resnet20" in proc.stdout.split() and "-F hydra_bash_completion kdrun" in proc.stdout, proc.stdout
    assert not (tmp_path / "outputs").exists()
