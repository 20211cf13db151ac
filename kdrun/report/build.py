"""A report: every table and plot a set of jobs calls for, written to one directory and printed.

The end of a sweep (sweep.py) and `kdrun-report` (command.py) both come here:

    summary.csv / .md             one row per job, failed ones with their error
    comparison.csv / .md          teacher, from-scratch and distilled groups: size, accuracy, latency
    per_class.csv / .md           every run's test accuracy per class (labelled images, omitted classes)
    temperature_sweep.csv/.md/.png   where T varies (sweep_<key>.* for any other swept scalar)
    sweep_<a>_x_<b>.csv/.md/.png     where exactly two scalars vary: a grid and a heatmap
    report.md                     all of the above in one page, plots inline
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from kdrun.console import console, results
from kdrun.deploy.report_columns import add_deploy_columns
from kdrun.deploy.robustness import plot_robustness, robustness_table
from kdrun.deploy.robustness_report import robustness_results
from kdrun.io import atomic_write_text
from kdrun.report.aggregate import Group, Study, canonical, display_name, format_value, study
from kdrun.report.jobs import JobRecord
from kdrun.report.latency import LatencyMeter
from kdrun.report.per_class import per_class_table
from kdrun.report.plots import Reference, Series, plot_heatmap, plot_sweep, reference_text
from kdrun.report.tables import (
    Table, comparison_table, grid_table, markdown_table, print_paths, sweep_file_stem, sweep_table, to_csv,
)
from kdrun.report.teacher_check import study_warnings

SUMMARY_METRICS = ("final_test_acc", "best_test_acc", "params", "teacher_test_acc", "wall_time_s")


def summary_rows(jobs: list[JobRecord]) -> tuple[list[str], list[dict]]:
    """One row per job: job, status, one column per overridden key, metrics, error.

    The values come from each job's own config.yaml (what it ran), not from .hydra/overrides.yaml,
    which a later invocation over the same directory may have rewritten."""
    keys = sorted({k for job in jobs for k in job.overrides})
    columns = ["job", "status", *keys, *SUMMARY_METRICS, "error"]
    one_parent = len({job.path.parent for job in jobs}) <= 1
    rows = []
    for job in jobs:
        row = {"job": job.path.name if one_parent else str(job.path), "status": job.status,
               **{k: canonical_text(job.value_of(k)) for k in keys}}
        row.update({m: job.metrics.get(m, "") for m in SUMMARY_METRICS})
        row["error"] = job.error
        rows.append(row)
    return columns, rows


def varying(columns: list[str], rows: list[dict], keys: set[str]) -> list[str]:
    """`columns` without those of `keys` that hold one value in every row (the summary's constants)."""
    return [c for c in columns if c not in keys or len({canonical_text(row[c]) for row in rows}) > 1]


def canonical_text(value) -> str:
    return format_value(canonical(value))


def sweep_series(s: Study, key: str) -> list[Series]:
    """One line per combination of the other swept keys, points sorted by `key`."""
    others = [k for k in s.swept if k != key]
    lines: dict[str, list[Group]] = {}
    for group in s.subjects:
        label = s.label(group, others) or f"{group.strategy} {group.arch}"
        lines.setdefault(label, []).append(group)
    series = []
    for label, groups in lines.items():
        groups = sorted(groups, key=lambda g: g.setting[key])
        series.append(Series(label, [g.setting[key] for g in groups], [g.stat("final_test_acc") for g in groups],
                             [g.stat("best_test_acc") for g in groups]))
    return series


def references(s: Study) -> list[Reference]:
    refs = [Reference(f"teacher {t.arch}", t.stat(), "teacher") for t in s.teachers]
    refs += [Reference(f"scratch {g.arch}", g.stat("final_test_acc"), "scratch") for g in s.scratch_refs]
    return refs


def notes_on(s: Study) -> list[str]:
    """What a reader should know about what is (not) in the tables."""
    notes = []
    if s.duplicates:
        notes.append(f"{len(s.duplicates)} job(s) repeat another job's setting and seed exactly (e.g. scratch jobs "
                     f"of a sweep over a key that scratch does not use); each such measurement is counted once.")
    if not any(g.distills for g in s.subjects):
        return notes
    if not s.scratch_refs:
        students = ", ".join(sorted({g.arch for g in s.subjects}))
        notes.append(f"No from-scratch {students} among these runs, so no scratch reference: add strategy=scratch "
                     f"to the sweep, or pass a scratch run's directory to kdrun-report.")
    if not s.teachers:
        notes.append("No teacher accuracy recorded by these runs, so no teacher reference.")
    return notes + study_warnings(s)


class ReportWriter:
    """Writes tables and plots into `out_dir`, keeps the Markdown sections and the list of files."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.files: list[Path] = []
        self.sections: list[str] = []

    def text(self, name: str, content: str) -> None:
        atomic_write_text(self.out_dir / name, content)
        self.files.append(self.out_dir / name)

    def table(self, stem: str, table: Table, image: str | None = None) -> None:
        self.text(f"{stem}.csv", table.csv())
        self.text(f"{stem}.md", table.markdown(image))
        self.sections.append(table.markdown(image))
        results.print(table.rich(files=f"{stem}.md, {stem}.csv"))

    def plot(self, path: Path) -> None:
        self.files += [path, path.with_suffix(".svg")]


def write_report(jobs: list[JobRecord], out_dir: Path, *, title: str, measure_latency: bool = True,
                 deploy: bool = False, robustness: bool = False) -> Study:
    """Write every table and plot for `jobs` into `out_dir`, print the tables, then the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = study(jobs)
    w = ReportWriter(out_dir)

    columns, rows = summary_rows(jobs)
    w.text("summary.csv", to_csv(columns, rows))  # every overridden key; the Markdown keeps what varies
    shown = varying(columns, rows, {k for job in jobs for k in job.overrides}) if len(rows) > 1 else columns
    w.text("summary.md", markdown_table(shown, [[row[c] for c in shown] for row in rows]))

    notes = notes_on(s)
    if s.groups:
        comparison = comparison_table(s, LatencyMeter() if measure_latency else None)
        comparison.notes += notes
        deployment = add_deploy_columns(comparison, s, out_dir) if deploy else None
        w.table("comparison", comparison)
        if deployment is not None:
            w.table("deployment", deployment)
    per_class = per_class_table(jobs)
    if per_class is not None:  # files and report.md only: one column per class is too wide for a console
        w.text("per_class.csv", per_class.csv())
        w.text("per_class.md", per_class.markdown())
        w.sections.append(per_class.markdown())
    if robustness and s.groups:
        results = robustness_results(s)
        w.plot(plot_robustness(out_dir / "robustness.png", results))
        w.table("robustness", robustness_table(results), image="robustness.png")
    numeric = s.numeric_swept
    for key in numeric:
        stem = sweep_file_stem([key])
        table = sweep_table(s, key)
        table.notes += notes
        w.plot(plot_sweep(out_dir / f"{stem}.png", display_name(key), sweep_series(s, key), references(s),
                          table.title))
        w.table(stem, table, image=f"{stem}.png")
    if len(numeric) == 2 and len(s.swept) == 2:
        write_grid(s, w, *numeric)

    if s.failed:
        failed = Table("failed jobs", ["job", "error"], [[str(j.path), j.error] for j in s.failed], [], [])
        w.sections.append(failed.markdown())
        console.print(f"[bold red]{len(s.failed)} of {len(jobs)} job(s) failed[/] (not in any mean):")
        for job in s.failed:  # the first line: the whole message is in summary.md and report.md
            console.print(f"  {job.path}: {job.error.splitlines()[0] if job.error else ''}", markup=False,
                          highlight=False, soft_wrap=True)
    if s.interrupted:
        stopped = Table("interrupted jobs", ["job", "to go on"], [[str(j.path), j.error] for j in s.interrupted],
                        [], [])
        w.sections.append(stopped.markdown())
        console.print(f"[bold yellow]{len(s.interrupted)} of {len(jobs)} job(s) interrupted[/] (not in any mean):")
        for job in s.interrupted:
            console.print(f"  {job.path}: {job.error}", markup=False, highlight=False, soft_wrap=True)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")

    w.text("report.md", f"# {title}\n\n" + "\n".join(w.sections) + "\n" + _sources(jobs))
    print_paths(w.files)
    return s


def write_grid(s: Study, w: ReportWriter, x_key: str, y_key: str) -> None:
    """Two swept scalars: the grid table and its heatmap."""
    stem = sweep_file_stem([x_key, y_key])
    table = grid_table(s, x_key, y_key)
    xs = sorted({g.setting[x_key] for g in s.subjects})
    ys = sorted({g.setting[y_key] for g in s.subjects})
    cells = {(g.setting[x_key], g.setting[y_key]): g.stat("final_test_acc") for g in s.subjects}
    footnote = "; ".join(f"{r.label} {reference_text(r.stat)}" for r in references(s))
    w.plot(plot_heatmap(w.out_dir / f"{stem}.png", display_name(x_key), display_name(y_key), xs, ys, cells,
                        table.title, footnote))
    w.table(stem, table, image=f"{stem}.png")


def _sources(jobs: list[JobRecord]) -> str:
    parents = sorted({str(job.path.parent) for job in jobs})
    return "Runs read from:\n\n" + "".join(f"- `{p}`\n" for p in parents)
