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
    _remove_empty_parents(run_dir)
    return True


def _remove_empty_parents(run_dir: Path) -> None:
    """The folders Hydra made for it (outputs/runs/<date>), where nothing else is in them; never above
    the current directory."""
    here = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == here or here not in parent.parents:
            return
        try:
            parent.rmdir()  # only succeeds on an empty folder
        except OSError:
            return
