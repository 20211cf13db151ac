"""Sweeps through Hydra's launcher plugins (kdrun[cluster]): joblib on one box, submitit locally, the
SLURM preset; concurrent jobs share one teacher and one teacher-output cache."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from conftest import KDRUN

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "HYDRA_FULL_ERROR": "0"}
SWEEP = ["-m", "experiment=quickstart", "device=cpu", "dataset.limit_train=256", "epochs=2",
         "teacher.epochs=1", "trainer.progress=false", "strategy=kd", "seed=0,1", "hydra.sweep.dir=sweep"]


def test_slurm_preset_names_its_settings():
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_task == 1 and launcher.timeout_min == 1440
    assert launcher.max_num_timeout == 3 and launcher.additional_parameters.requeue is True


def sweep(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(KDRUN), *SWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def jobs(sweep_dir: Path) -> list[dict]:
    return [json.loads((sweep_dir / str(n) / "metrics.json").read_text()) for n in (0, 1)]


@pytest.mark.slow
def test_joblib_runs_two_jobs_at_once_sharing_one_teacher_and_one_output_cache(tmp_path):
    sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    sweep_dir = tmp_path / "sweep"
    with open(sweep_dir / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (sweep_dir / "report.md").is_file()
    summaries = jobs(sweep_dir)
    assert all(s["status"] == "completed" for s in summaries)
    # One teacher trained (the other job waited for it and read it), each epoch's targets recorded once.
    assert sorted(s["teacher_source"] for s in summaries) == ["cache", "trained"]
    assert len(list((tmp_path / "outputs" / "teachers").glob("*/*/*/teacher.pt"))) == 1
    assert sum(s["teacher_cache_recorded"] for s in summaries) == 2
    assert len(list((tmp_path / "outputs" / "teacher_outputs").glob("*/epoch_*.bin"))) == 2


@pytest.mark.slow
def test_submitit_local_sweep_writes_its_summary_and_report_rebuilds_it(tmp_path):
    sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    sweep_dir = tmp_path / "sweep"
    assert all(s["status"] == "completed" for s in jobs(sweep_dir))
    summary = sweep_dir / "summary.csv"
    assert summary.is_file() and (sweep_dir / "report.md").is_file()
    # After a requeue the launcher's end-of-sweep callback may never run: kdrun-report rebuilds from the jobs.
    summary.unlink()
    proc = subprocess.run([str(KDRUN.with_name("kdrun-report")), str(sweep_dir), "--out", str(sweep_dir),
                           "--no-latency"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(summary) as f:
        assert len(list(csv.DictReader(f))) == 2
