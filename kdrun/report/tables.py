"""Tables: one shape (title, display cells, CSV rows) rendered to the console, Markdown and CSV.

Every accuracy a table shows is a mean ± sample std over the seeds of a group,
with its n beside it. "test acc" is the final epoch's; "best-epoch acc" picks
the epoch on the test set, an optimistic number, shown for comparison with
papers that report it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.console import Group as Lines
from rich.table import Table as RichTable
from rich.text import Text

from kdrun.console import console, results
from kdrun.errors import KdrunError
from kdrun.report.console_table import console_table
from kdrun.report.aggregate import (Group, Stat, Study, TeacherRef, display_name, format_value, is_temperature,
                                    swept_keys)
from kdrun.report.jobs import JobRecord
from kdrun.report.latency import Latency, LatencyMeter
from kdrun.report.teacher_check import run_warning, underfit_warning
from kdrun.report.significance import Difference, welch

ACC = "test acc %"
BEST = "best-epoch acc %"
DELTA = "Δ vs scratch"
DELTA_NOTE = ("Δ vs scratch: test acc of a distilled group minus that of the from-scratch student of the same "
              "architecture, in points, with Welch's two-sided t-test p-value over the seeds (n/a under 2 seeds).")
NOTE = ("Accuracies: mean ± sample std over n seeds. test acc = the final epoch's; "
        "best-epoch acc = the best epoch on the test set (optimistic).")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]  # display cells, as in the console and the Markdown
    csv_columns: list[str]
    csv_rows: list[dict]  # raw numbers: mean, std and n in columns of their own
    notes: list[str] = field(default_factory=list)

    def markdown_table(self) -> str:
        return markdown_table(self.columns, self.rows)

    def markdown(self, image: str | None = None) -> str:
        parts = [f"## {self.title}", self.markdown_table().rstrip("\n"), *self.notes]
        if image:
            parts.append(f"![{self.title}]({image})")
        return "\n\n".join(parts) + "\n"

    def csv(self) -> str:
        return to_csv(self.csv_columns, self.csv_rows)

    def rich(self, files: str | None = None) -> Lines:
        """The console view (80 columns): see console_table; `files` names where every column is."""
        return console_table(self.title, self.columns, self.rows, _numeric_column,
                             f"all columns: {files}" if files else None)


def _numeric_column(column: str) -> bool:
    return column in ("params", "size MB", ACC, BEST, "n", "latency ms", "images/s") or column.endswith("%")


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    def escape(value) -> str:
        return cell(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def stat_fields(prefix: str, s: Stat | None) -> dict:
    if s is None:
        return {f"{prefix}_mean": "", f"{prefix}_std": ""}
    return {f"{prefix}_mean": round(s.mean, 4), f"{prefix}_std": "" if s.std != s.std else round(s.std, 4)}


def seeds_text(group: Group) -> str:
    return " ".join(str(s) for s in group.seeds)


# --- the classic comparison: teacher, student from scratch, distilled student --------------------------


def comparison_table(study: Study, meter: LatencyMeter | None = None) -> Table:
    """One row per teacher, per from-scratch group and per distilled group, with size and speed."""
    # The classic columns; best-epoch accuracy is in the CSV and the sweep tables.
    columns = ["model", "trained as", "params", "size MB", ACC, "n", DELTA, "latency ms", "images/s", "device"]
    scratch = [g for g in study.groups if not g.distills]
    distilled = [g for g in study.groups if g.distills]
    scratch_keys = swept_keys(scratch)
    distilled_keys = [k for k in swept_keys(distilled) if k != "strategy.name"]
    rows, csv_rows = [], []

    def add(model: str, trained_as: str, params: int, size_mb: float, acc: Stat, best: Stat | None,
            latency: Latency | None, extra: dict, vs_scratch: Difference | None = None) -> None:
        rows.append([model, trained_as, f"{params:,}", f"{size_mb:.3f}", acc.text(), str(acc.n),
                     vs_scratch.text() if vs_scratch else "",
                     f"{latency.ms:.3f}" if latency else "n/a",
                     f"{latency.images_per_s:,.0f}" if latency else "n/a", latency.device if latency else ""])
        csv_rows.append({"model": model, "trained_as": trained_as, "params": params, "size_mb": size_mb,
                         **stat_fields("test_acc", acc), **stat_fields("best_test_acc", best), "n": acc.n,
                         "latency_ms": round(latency.ms, 4) if latency else "",
                         "images_per_s": round(latency.images_per_s, 1) if latency else "",
                         "latency_device": latency.device if latency else "",
                         "delta_vs_scratch": round(vs_scratch.delta, 4) if vs_scratch else "",
                         "welch_p": "" if vs_scratch is None or vs_scratch.p_value != vs_scratch.p_value
                         else f"{vs_scratch.p_value:.4g}", **extra})

    for ref in study.teachers:
        add(ref.arch, "teacher", ref.params, ref.size_mb, ref.stat(), None, _teacher_latency(ref, meter),
            {"strategy": "teacher", "seeds": "", "path": " ".join(ref.paths)})
    for group, keys in [*((g, scratch_keys) for g in scratch), *((g, distilled_keys) for g in distilled)]:
        label = study.label(group, keys)
        add(group.arch, f"{group.strategy} {label}".strip(), group.metrics["params"], group.metrics["size_mb"],
            group.stat("final_test_acc"), group.stat("best_test_acc"), _group_latency(group, meter),
            {"strategy": group.strategy, "seeds": seeds_text(group),
             "path": " ".join(str(j.path) for j in group.jobs)},
            _vs_scratch(group, scratch) if group.distills else None)

    csv_columns = ["model", "trained_as", "strategy", "params", "size_mb", "test_acc_mean", "test_acc_std",
                   "best_test_acc_mean", "best_test_acc_std", "n", "delta_vs_scratch", "welch_p", "seeds", "latency_ms", "images_per_s",
                   "latency_device", "path"]
    notes = [NOTE, "Latency: median per image at batch 1, from each group's checkpoint, measured on this machine "
                   "on the device the run used (the CPU with one thread; the CPU also when that device is missing).",
             DELTA_NOTE]
    if meter is not None and meter.problems:
        notes += [f"Not measured: {p}" for p in meter.problems]
    title = "comparison"
    devices = {r["latency_device"] for r in csv_rows if r["latency_device"]}
    if len(devices) <= 1:  # one device for all: say it once, in the title
        title += f" (latency at batch 1 on {devices.pop()})" if devices else ""
        rows = [row[:-1] for row in rows]
        columns = columns[:-1]
    return Table(title, columns, rows, csv_columns, csv_rows, notes)


def twin_scratch(group: Group, scratch: list[Group]) -> Group | None:
    """The from-scratch group a distilled group is compared with: same dataset, same student (architecture
    and its options), and of those the one whose other settings agree most (epochs, recipe)."""
    def student(g: Group) -> tuple:
        return g.arch, g.dataset, sorted((k, str(v)) for k, v in g.setting.items() if k.startswith("student."))

    candidates = [g for g in scratch if student(g) == student(group)]
    agreement = lambda g: sum(g.setting.get(k) == v for k, v in group.setting.items())  # noqa: E731
    return max(candidates, key=agreement, default=None)


def _vs_scratch(group: Group, scratch: list[Group]) -> Difference | None:
    twin = twin_scratch(group, scratch)
    if twin is None:
        return None
    values = lambda g: [float(job.metrics["final_test_acc"]) for job in g.jobs]  # noqa: E731
    return welch(values(group), values(twin))


def _teacher_latency(ref: TeacherRef, meter: LatencyMeter | None) -> Latency | None:
    """One teacher's; an ensemble (strategy=multi_teacher records "a.pt,b.pt") runs each member in turn."""
    if meter is None or ref.job is None:
        return None
    members = [meter.measure(ref.job.resolve(path), *_runtime_of(ref.job)) for path in ref.paths[0].split(",")]
    if None in members:
        return None
    ms = sum(member.ms for member in members)
    return Latency(ms, 1e3 / ms, members[0].device)


def _group_latency(group: Group, meter: LatencyMeter | None) -> Latency | None:
    if meter is None:
        return None
    job = group.jobs[0]
    return meter.measure(job.path / "checkpoints" / "last.pt", *_runtime_of(job))


def _runtime_of(job: JobRecord) -> tuple[str, str, bool]:
    """How the job ran its models: device, precision, memory format."""
    return (job.metrics.get("device", "cpu"), job.metrics.get("precision", "fp32"),
            bool(job.config.get("device.channels_last", False)))


# --- sweeps: accuracy against a swept scalar, and two scalars as a grid -------------------------------


def sweep_file_stem(keys: list[str]) -> str:
    """temperature_sweep for T, sweep_<key> for another key, sweep_<a>_x_<b> for two."""
    if len(keys) == 1 and is_temperature(keys[0]):
        return "temperature_sweep"
    return "sweep_" + "_x_".join(display_name(k) for k in keys)


def reference_rows(study: Study) -> list[tuple[str, str, Stat, Stat | None, str]]:
    """(role, model, test acc, best-epoch acc, seeds) of the teachers and the from-scratch students."""
    rows = [("teacher", ref.arch, ref.stat(), None, "") for ref in study.teachers]
    rows += [("scratch", g.arch, g.stat("final_test_acc"), g.stat("best_test_acc"), seeds_text(g))
             for g in study.scratch_refs]
    return rows


def reference_values(study: Study, keys: tuple[str, ...]) -> list[list[str]]:
    """Per reference row, its values of `keys` where they tell the from-scratch references apart (scratch with
    5% and with all labels); blank otherwise, as for a key scratch ignores (T)."""
    differing = {k for k in keys if len({json.dumps(g.setting.get(k), default=str) for g in study.scratch_refs}) > 1}
    teachers = [[""] * len(keys) for _ in study.teachers]
    return teachers + [[format_value(g.setting.get(k)) if k in differing else "" for k in keys]
                       for g in study.scratch_refs]


def sweep_table(study: Study, key: str) -> Table:
    """One row per value of `key` (per combination of the other swept keys), after the reference rows."""
    series = [k for k in study.swept if k != key]
    names = [display_name(k) for k in (*series, key)]
    columns = ["row", "model", *names, ACC, BEST, "n", "seeds"]
    rows, csv_rows = [], []
    for (role, model, acc, best, seeds), values in zip(reference_rows(study), reference_values(study, (*series, key))):
        rows.append([role, model, *values, acc.text(), best.text() if best else "", str(acc.n), seeds])
        csv_rows.append({"row": role, "model": model, **{n: v for n, v in zip(names, values) if v},
                         **stat_fields("test_acc", acc), **stat_fields("best_test_acc", best), "n": acc.n,
                         "seeds": seeds})
    ordered = sorted(study.subjects, key=lambda g: tuple(_sort_key(g.setting.get(k)) for k in (*series, key)))
    for group in ordered:
        values = [format_value(group.setting.get(k)) for k in (*series, key)]
        acc, best = group.stat("final_test_acc"), group.stat("best_test_acc")
        rows.append([group.strategy, group.arch, *values, acc.text(), best.text(), str(acc.n), seeds_text(group)])
        csv_rows.append({"row": group.strategy, "model": group.arch, **dict(zip(names, values)),
                         **stat_fields("test_acc", acc), **stat_fields("best_test_acc", best), "n": acc.n,
                         "seeds": seeds_text(group)})
    csv_columns = ["row", "model", *names, "test_acc_mean", "test_acc_std", "best_test_acc_mean",
                   "best_test_acc_std", "n", "seeds"]
    title = f"{display_name(key)} sweep: {_subject_text(study)}"
    return Table(title, columns, rows, csv_columns, csv_rows, [NOTE])


def grid_table(study: Study, x_key: str, y_key: str) -> Table:
    """Two swept scalars: a grid of test accuracy (rows y, columns x) in Markdown, long rows in CSV."""
    xs = sorted({g.setting[x_key] for g in study.subjects})
    ys = sorted({g.setting[y_key] for g in study.subjects})
    cells = {(g.setting[x_key], g.setting[y_key]): g for g in study.subjects}
    x_name, y_name = display_name(x_key), display_name(y_key)
    columns = [f"{y_name} \\ {x_name}", *(format_value(x) for x in xs)]
    rows = [[format_value(y), *(_grid_cell(cells.get((x, y))) for x in xs)] for y in ys]
    csv_rows = [{"row": role, "model": model, **stat_fields("test_acc", acc), **stat_fields("best_test_acc", best),
                 "n": acc.n, "seeds": seeds} for role, model, acc, best, seeds in reference_rows(study)]
    for (x, y), g in sorted(cells.items()):
        acc, best = g.stat("final_test_acc"), g.stat("best_test_acc")
        csv_rows.append({"row": g.strategy, "model": g.arch, x_name: format_value(x), y_name: format_value(y),
                         **stat_fields("test_acc", acc), **stat_fields("best_test_acc", best), "n": acc.n,
                         "seeds": seeds_text(g)})
    csv_columns = ["row", "model", x_name, y_name, "test_acc_mean", "test_acc_std", "best_test_acc_mean",
                   "best_test_acc_std", "n", "seeds"]
    notes = [f"Cells: {ACC} (the final epoch's), mean ± sample std (n seeds)."]
    notes += [f"{role} {model}: {acc} {ACC}" for role, model, acc, _, _ in reference_rows(study)]
    return Table(f"{y_name} × {x_name}: {_subject_text(study)}", columns, rows, csv_columns, csv_rows, notes)


def _grid_cell(group: Group | None) -> str:
    if group is None:
        return ""
    return str(group.stat("final_test_acc"))


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _subject_text(study: Study) -> str:
    students = sorted({g.arch for g in study.subjects})
    datasets = sorted({g.dataset for g in study.subjects})
    teachers = sorted({t.arch for t in study.teachers})
    text = "/".join(students) + (" ← " + "/".join(teachers) if teachers else "")
    return f"{text} on {'/'.join(datasets)}"


# --- the end of one run ---------------------------------------------------------------------------------


RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.json", "learning_curves.png", "learning_curves.svg",
             "checkpoints/best.pt",
             "checkpoints/last.pt", "tensorboard")


def print_run_summary(summary: dict, run_dir: Path) -> None:
    """The run's table (one seed: n=1, and said so), then the paths of what it wrote."""
    seed = summary.get("seed", "?")
    title = Text(f"{summary.get('strategy', 'run')}: {summary['arch']} on {summary.get('dataset', '?')} "
                 f"(one run, seed {seed}: n=1)", style="bold")  # wrapped at the console's width, not the table's
    table = RichTable()
    for column in ("model", "params", "size MB", ACC, BEST):
        table.add_column(column, justify="left" if column == "model" else "right")
    if "teacher_arch" in summary:
        table.add_row(f"teacher {summary['teacher_arch']}", f"{summary['teacher_params']:,}",
                      f"{summary['teacher_size_mb']:.3f}", f"{summary['teacher_test_acc']:.2f}", "")
    table.add_row(f"student {summary['arch']}", f"{summary['params']:,}", f"{summary['size_mb']:.3f}",
                  f"{summary['final_test_acc']:.2f}", f"{summary['best_test_acc']:.2f}")
    results.print(Lines(title, table))
    for warning in (run_warning(summary), underfit_warning(summary, read_history(Path(run_dir)))):
        if warning:
            console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    print_paths([Path(run_dir) / name for name in RUN_FILES if (Path(run_dir) / name).exists()])


def read_history(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl records ([] without the file)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def print_paths(paths: list[Path]) -> None:
    results.print("[bold]files:[/]")
    for path in paths:
        results.print(f"  {path}", markup=False, highlight=False, soft_wrap=True)


def run_table_command(write: Callable[[], list[Path]], out: Path) -> int:
    """A reproduction's table command (kdrun.report.hinton, .omitted_class): write the files, list them and print
    table.md; a KdrunError is one line on stderr and rc 2, with nothing written."""
    try:
        paths = write()
    except KdrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    print((out / "table.md").read_text())
    return 0
