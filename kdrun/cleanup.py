"""Leaving no trace of a run that never started, so that it never shows up as a failed job."""

from __future__ import annotations

import shutil
from pathlib import Path

# What a run directory holds before training begins: Hydra's files and the job log, kdrun's config.yaml.
BEFORE_TRAINING = {".hydra", "config.yaml", "metrics.json"}


def discard_unstarted_run(run_dir: Path) -> bool:
    """Remove `run_dir` if nothing was trained in it (only Hydra's and kdrun's opening files); True if removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    leftovers = {n for n in names - BEFORE_TRAINING if not n.endswith(".log")}
    if leftovers:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
