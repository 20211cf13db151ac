"""Reports from real (tiny) kdrun runs: the end of a sweep, the end of a run, and `kdrun-report`.

Two kdrun invocations, shared by the tests of this file: a sweep over strategy, T and
seed, and a single from-scratch run with another seed (logging to TensorBoard when it
is installed).
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from conftest import TINY, only_run_dir, run_kdrun

KDRUN_REPORT = Path(sys.executable).with_name("kdrun-report")
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("runs")
    logger = ["logger=tensorboard"] if HAS_TENSORBOARD else []
    with pytest.MonkeyPatch.context() as mp:
        # One thread: these models are tiny, and on a busy machine two torch threads waiting
        # for each other made this fixture 3x slower (61 s against 21 s).
        mp.setenv("OMP_NUM_THREADS", "1")
        sweep = run_kdrun(cwd, "-m", *TINY, "strategy=scratch,kd", "T=1,4", "seed=0,1")
        single = run_kdrun(cwd, *TINY, "strategy=scratch", "seed=2", *logger)
    (sweep_dir,) = (cwd / "outputs" / "sweeps").glob("*/*")
    return {"cwd": cwd, "sweep": sweep, "sweep_dir": sweep_dir, "single": single, "run_dir": only_run_dir(cwd)}


def test_a_sweep_with_scratch_and_kd_ends_with_grouped_tables_plots_and_paths(runs):
    sweep = runs["sweep_dir"]
    table = rows(sweep / "temperature_sweep.csv")
    assert [(r["row"], r["T"], r["n"]) for r in table] == [
        ("teacher", "", "1"), ("scratch", "", "2"), ("kd", "1", "2"), ("kd", "4", "2")]
    assert all(r["seeds"] == "0 1" for r in table[2:])
    image = imread(sweep / "temperature_sweep.png")
    assert image.shape[0] >= 300 and image.shape[1] >= 500

    comparison = rows(sweep / "comparison.csv")
    assert [r["trained_as"] for r in comparison] == ["teacher", "scratch", "kd T=1", "kd T=4"]
    assert all(float(r["latency_ms"]) > 0 for r in comparison)

    jobs = [p for p in sweep.iterdir() if (p / ".hydra").is_dir()]
    assert len(jobs) == 8
    for job in jobs:
        assert imread(job / "learning_curves.png").shape[1] >= 800

    stdout = runs["sweep"].stdout
    out = " ".join(stdout.split())
    assert "2 job(s) repeat another job's setting and seed" in " ".join(runs["sweep"].stderr.split())  # a note
    assert "T sweep" in out and "files:" in out
    assert stdout.rstrip().endswith("report.md")


def test_a_sweep_prints_one_line_per_job_and_keeps_the_epochs_in_each_jobs_log(runs):
    """Issue 23 item 17: no per-epoch wall on the console; item 13: results alone on stdout."""
    sweep, sweep_dir = runs["sweep"], runs["sweep_dir"]
    job_lines = [line for line in sweep.stderr.splitlines() if line.startswith("job ")]
    assert [line.split(" (")[0] for line in job_lines] == [f"job {n}" for n in range(8)], sweep.stderr
    assert all("test " in line and "% (best " in line for line in job_lines)
    assert "epoch 1/1" not in sweep.stdout + sweep.stderr and "[HYDRA]" not in sweep.stdout
    assert "recipe:" not in sweep.stdout + sweep.stderr  # a job's notes are in its log
    for n in range(8):
        log = (sweep_dir / str(n) / "train.log").read_text()
        assert f"job {n} " in log and "epoch 1/1" in log and "recipe:" in log
    assert "job 0 (" not in sweep.stdout and "T sweep" in sweep.stdout


def test_a_single_run_redirected_prints_plain_epoch_lines_on_stderr(runs):
    single = runs["single"]
    assert "scratch epoch 1/1" in single.stderr and "epoch 1/1" not in single.stdout


def test_a_run_ends_with_its_table_and_the_paths_of_its_files(runs):
    run_dir, out = runs["run_dir"], runs["single"].stdout
    assert imread(run_dir / "learning_curves.png").shape[1] >= 800
    assert "n=1" in out and out.index("test acc") < out.index("files:")
    for name in ("metrics.json", "learning_curves.png", "checkpoints/last.pt"):
        assert str(run_dir / name) in out


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is an optional extra")
def test_logger_tensorboard_writes_event_files_into_the_run(runs):
    assert list((runs["run_dir"] / "tensorboard").glob("events.out.tfevents.*"))
    assert str(runs["run_dir"] / "tensorboard") in runs["single"].stdout


def test_kdrun_report_is_installed_and_groups_runs_from_separate_invocations(runs):
    proc = subprocess.run([str(KDRUN_REPORT), str(runs["sweep_dir"]), str(runs["run_dir"]), "--out", "report",
                           "--no-latency"], cwd=runs["cwd"], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    comparison = rows(runs["cwd"] / "report" / "comparison.csv")
    # the single scratch run (seed 2) joins the sweep's scratch seeds 0 and 1
    assert [(r["trained_as"], r["n"], r["seeds"]) for r in comparison] == [
        ("teacher", "1", ""), ("scratch", "3", "0 1 2"), ("kd T=1", "2", "0 1"), ("kd T=4", "2", "0 1")]
    assert (runs["cwd"] / "report" / "temperature_sweep.png").is_file()
