"""The end of a multirun: the sweep's report, written into the sweep directory."""

from __future__ import annotations

from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdrun.report.build import write_report
from kdrun.report.jobs import JobRecord, read_job, read_sweep


def write_summary(sweep_dir: Path, job_count: int | None = None) -> list[JobRecord]:
    """summary.*, comparison.*, the sweep tables and plots, report.md; printed, then their paths.
    With `job_count`, of jobs 0 .. job_count-1 only: the jobs this sweep ran, whatever else the folder holds."""
    jobs = read_sweep(sweep_dir)
    if job_count is not None:
        own = [sweep_dir / str(num) for num in range(job_count)]
        if any(path.is_dir() for path in own):  # else hydra.sweep.subdir names them otherwise: take them all
            jobs = [read_job(path) for path in own if path.is_dir()]
    write_report(jobs, sweep_dir, title=f"sweep {sweep_dir}")
    return jobs


def job_count(task_overrides: list[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of these overrides (None for a grammar it does not read)."""
    try:
        parsed = OverridesParser.create().parse_overrides(task_overrides)
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # another sweeper's syntax (e.g. an optuna interval): then no count
        return None


class SweepSummaryCallback(Callback):
    """Registered in conf/config.yaml under hydra.callbacks."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir, job_count(list(config.hydra.overrides.task)))
