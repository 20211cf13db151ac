"""The end of a multirun: summary.csv / summary.md and a console table, one row per job."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.table import Table

from kdrun.console import console
from kdrun.io import atomic_write_text
from kdrun.report.jobs import JobRecord, read_sweep
from kdrun.report.tables import comparison_table

METRIC_COLUMNS = ("final_test_acc", "best_test_acc", "params", "teacher_test_acc", "wall_time_s")


def summary_rows(jobs: list[JobRecord]) -> tuple[list[str], list[dict]]:
    """Columns and rows: job, status, one column per overridden key, metrics, error."""
    keys = sorted({k for job in jobs for k in job.overrides})
    columns = ["job", "status", *keys, *METRIC_COLUMNS, "error"]
    rows = []
    for job in jobs:
        row = {"job": job.path.name, "status": job.status, **{k: job.overrides.get(k, "") for k in keys}}
        row.update({m: job.metrics.get(m, "") for m in METRIC_COLUMNS})
        row["error"] = job.error
        rows.append(row)
    return columns, rows


def to_csv(columns: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(columns: list[str], rows: list[dict]) -> str:
    def cell(value) -> str:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def console_table(sweep_dir: Path, jobs: list[JobRecord], rows: list[dict]) -> Table:
    """The summary without what is the same for every job (it is in summary.csv)."""
    swept = [k for k in sorted({k for job in jobs for k in job.overrides})
             if len({job.overrides.get(k) for job in jobs}) > 1]
    table = Table(title=f"sweep {sweep_dir}")
    for column in ("#", "status", *swept, "final test acc %", "best test acc %", "error"):
        table.add_column(column, overflow="fold")
    for number, (job, row) in enumerate(zip(jobs, rows)):
        table.add_row(str(number), job.status, *(row[k] for k in swept),
                      *(f"{row[m]:.2f}" if isinstance(row[m], float) else "" for m in METRIC_COLUMNS[:2]),
                      row["error"])
    return table


def write_summary(sweep_dir: Path) -> list[JobRecord]:
    jobs = read_sweep(sweep_dir)
    columns, rows = summary_rows(jobs)
    atomic_write_text(sweep_dir / "summary.csv", to_csv(columns, rows))
    atomic_write_text(sweep_dir / "summary.md", to_markdown(columns, rows))
    console.print(console_table(sweep_dir, jobs, rows))
    comparison = comparison_table(jobs)
    if comparison is not None:
        console.print(comparison)
    console.print(f"wrote {sweep_dir / 'summary.csv'} and {sweep_dir / 'summary.md'}")
    return jobs


class SweepSummaryCallback(Callback):
    """Registered in conf/config.yaml under hydra.callbacks."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            write_summary(sweep_dir)
