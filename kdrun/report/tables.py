"""Console tables: the end of a run, and the teacher / scratch / distilled comparison of a sweep."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from kdrun.console import console
from kdrun.report.aggregate import group_by_seed, stat
from kdrun.report.jobs import JobRecord


def print_run_summary(summary: dict, run_dir: Path) -> None:
    table = Table(title=f"{summary.get('strategy', 'run')}: {summary['arch']} on {summary.get('dataset', '?')}")
    for column in ("model", "params", "size MB", "final test acc %", "best test acc %"):
        table.add_column(column, justify="left" if column == "model" else "right")
    if "teacher_arch" in summary:
        table.add_row(f"teacher {summary['teacher_arch']}", f"{summary['teacher_params']:,}",
                      f"{summary['teacher_size_mb']:.3f}", f"{summary['teacher_test_acc']:.2f}", "")
    table.add_row(f"student {summary['arch']}", f"{summary['params']:,}", f"{summary['size_mb']:.3f}",
                  f"{summary['final_test_acc']:.2f}", f"{summary['best_test_acc']:.2f}")
    console.print(table)
    console.print(f"files in {run_dir}: config.yaml metrics.jsonl metrics.json checkpoints/{{best,last}}.pt")


def comparison_table(jobs: list[JobRecord]) -> Table | None:
    """Teacher, then one row per group of seeds: mean ± std (n) of test accuracy.

    None when every job is its own group and there is no teacher: the per-job
    summary already says everything.
    """
    groups = group_by_seed(jobs)
    teachers = {job.metrics["teacher_path"]: job.metrics for jobs_ in groups.values() for job in jobs_
                if "teacher_path" in job.metrics}
    if not teachers and all(len(g) == 1 for g in groups.values()):
        return None
    table = Table(title="comparison (mean ± sample std over seeds)")
    for column in ("model", "strategy", "params", "size MB", "final test acc %", "best test acc %"):
        table.add_column(column, justify="left" if column in ("model", "strategy") else "right")
    for m in teachers.values():
        table.add_row(f"teacher {m['teacher_arch']}", "scratch", f"{m['teacher_params']:,}",
                      f"{m['teacher_size_mb']:.3f}", f"{m['teacher_test_acc']:.2f} (n=1)", "")
    for label, members in groups.items():
        first = members[0].metrics
        other = " ".join(f"{k}={v}" for k, v in label if k != "strategy")
        table.add_row(
            f"student {first['arch']}" + (f" [{other}]" if other else ""), first.get("strategy", "?"),
            f"{first['params']:,}", f"{first['size_mb']:.3f}",
            str(stat([j.metrics["final_test_acc"] for j in members])),
            str(stat([j.metrics["best_test_acc"] for j in members])),
        )
    return table
