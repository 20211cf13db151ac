"""The end of a multirun: the sweep's report, written into the sweep directory."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdrun.report.build import write_report
from kdrun.report.jobs import JobRecord, read_sweep


def write_summary(sweep_dir: Path) -> list[JobRecord]:
    """summary.*, comparison.*, the sweep tables and plots, report.md; printed, then their paths."""
    jobs = read_sweep(sweep_dir)
    write_report(jobs, sweep_dir, title=f"sweep {sweep_dir}")
    return jobs


class SweepSummaryCallback(Callback):
    """Registered in conf/config.yaml under hydra.callbacks."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)
