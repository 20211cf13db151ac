"""Shared test helpers: run the real `kdrun` command in a scratch directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

KDRUN = Path(sys.executable).with_name("kdrun")

# One torch thread in this process and in every kdrun it starts: the models here are tiny, and
# `make test` runs a test process per core (pytest-xdist), so a second thread each would only thrash.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# A digits job that takes a second or two: the smallest real end-to-end run.
TINY = ["dataset=digits", "teacher=mlp", "student=cnn_student", "epochs=1", "trainer.progress=false"]


def run_kdrun(cwd: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `kdrun ARGS` in `cwd` as a user would; fail with its output if `check` and it failed."""
    env = {**os.environ, "COLUMNS": "200", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([str(KDRUN), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        pytest.fail(f"kdrun {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def only_run_dir(cwd: Path) -> Path:
    """The single run directory under outputs/runs/<date>/."""
    runs = sorted((cwd / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def kdrun(tmp_path):
    """`kdrun(*args, check=True)` runs the CLI in a fresh directory (tmp_path)."""

    def _run(*args: str, check: bool = True, timeout: float = 300):
        return run_kdrun(tmp_path, *args, check=check, timeout=timeout)

    return _run


def kd_terms(alpha: float = 0.1, beta: float = 0.9, T: float = 4.0):
    """The logit terms of loss=kd with the given ce weight, kd weight and temperature."""
    from omegaconf import OmegaConf

    from kdrun.methods.terms.compose import build_logit_terms

    return build_logit_terms(OmegaConf.create({"loss": {"terms": {"ce": {"weight": alpha},
                                                                  "kd": {"weight": beta, "T": T}}}}))


def trainer_settings(**keys):
    """A TrainerConfig with the `trainer` group's shipped defaults (conf/config.yaml), changed by `keys`."""
    from omegaconf import OmegaConf

    from kdrun.engine.trainer import TrainerConfig

    shipped = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "config.yaml")
    return TrainerConfig(**{**OmegaConf.to_container(shipped.trainer, resolve=True), **keys})
