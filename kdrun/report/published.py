"""Our reproduction beside the published numbers: per pair, teacher, scratch, KD and DKD.

Each cell shows the published accuracy, ours at the last epoch (mean ± sample std over
seeds: the default, since choosing the best epoch on the test set flatters a method) and
ours at the best epoch, the difference last-epoch mean minus published, and a verdict:
`within` when the published number lies within two sample stds of our mean (about the
spread of our seeds), else `ours higher` / `ours lower`; one seed has no spread to judge by.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from kdrun.errors import KdrunError
from kdrun.report.aggregate import Stat, stat
from kdrun.report.jobs import find_jobs

ROLES = ("teacher", "scratch", "kd", "dkd")
PUBLISHED_COLUMNS = {"teacher": "teacher_acc", "scratch": "scratch_acc", "kd": "kd_acc", "dkd": "dkd_acc"}
SOURCE_COLUMNS = {"teacher": "source_teacher_scratch_kd", "scratch": "source_teacher_scratch_kd",
                  "kd": "source_teacher_scratch_kd", "dkd": "source_dkd"}
SPREAD_STDS = 2.0


@dataclass(frozen=True)
class PublishedRow:
    pair: str
    teacher: str
    student: str
    accuracy: dict[str, float | None]  # role -> published %, None where the paper has no number
    source: dict[str, str]  # role -> where its number was published


def read_published(path: str | Path) -> list[PublishedRow]:
    """Parse the published-numbers CSV; a malformed row is an error naming the row and column."""
    rows = []
    with open(path, newline="") as f:
        for line, record in enumerate(csv.DictReader(f), start=2):
            accuracy = {}
            for role, column in PUBLISHED_COLUMNS.items():
                text = (record.get(column) or "").strip()
                try:
                    accuracy[role] = float(text) if text else None
                except ValueError:
                    raise KdrunError(f"{path}:{line}: {column} must be a percentage or empty, got {text!r}") from None
                if accuracy[role] is not None and not 0 <= accuracy[role] <= 100:
                    raise KdrunError(f"{path}:{line}: {column} must be within 0..100, got {text!r}")
            source = {role: (record.get(SOURCE_COLUMNS[role]) or "").strip() for role in ROLES}
            if missing := [SOURCE_COLUMNS[r] for r in ROLES if accuracy[r] is not None and not source[r]]:
                raise KdrunError(f"{path}:{line}: a published number without its source ({', '.join(missing)})")
            rows.append(PublishedRow(record["pair"], record["teacher"], record["student"], accuracy, source))
    return rows


@dataclass(frozen=True)
class Cell:
    role: str
    published: float | None
    last: Stat | None  # last-epoch test accuracy over seeds
    best: Stat | None  # best-epoch test accuracy over seeds

    @property
    def delta(self) -> float | None:
        if self.published is None or self.last is None:
            return None
        return self.last.mean - self.published

    @property
    def verdict(self) -> str:
        if self.last is None:
            return "not run"
        if self.published is None:
            return "no published number"
        if self.last.n < 2:
            return "1 seed: no spread"
        if abs(self.delta) <= SPREAD_STDS * self.last.std:
            return "within"
        return "ours higher" if self.delta > 0 else "ours lower"


def measured(role_dir: Path) -> tuple[Stat | None, Stat | None]:
    """(last-epoch, best-epoch) accuracy over the completed jobs under `role_dir`."""
    if not role_dir.is_dir():
        return None, None
    jobs = [job for job in find_jobs([role_dir]) if job.status == "completed"]
    if not jobs:
        return None, None
    return stat([j.metrics["final_test_acc"] for j in jobs]), stat([j.metrics["best_test_acc"] for j in jobs])


def pair_cells(row: PublishedRow, pair_dir: Path) -> list[Cell]:
    return [Cell(role, row.accuracy[role], *measured(pair_dir / role)) for role in ROLES]


def teacher_warning(cells: list[Cell]) -> str | None:
    """A teacher no better than the student from scratch cannot be expected to help it."""
    by_role = {c.role: c for c in cells}
    teacher, scratch = by_role["teacher"].last, by_role["scratch"].last
    if teacher is None or scratch is None or teacher.mean > scratch.mean:
        return None
    return (f"teacher ({teacher.mean:.2f}%) is no better than the student from scratch "
            f"({scratch.mean:.2f}%): distillation has nothing to add")


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _stat_text(value: Stat | None) -> str:
    return "not run" if value is None else f"{value.text()} (n={value.n})"


HEADER = ["pair", "role", "published", "ours last epoch (mean ± std)", "ours best epoch (mean ± std)",
          "Δ last − published", "verdict", "published in"]


def table_rows(published: list[PublishedRow], root: Path) -> tuple[list[list[str]], list[str]]:
    """Every (pair, role) row whose pair has a directory under `root`, and the warnings."""
    rows, warnings = [], []
    for row in published:
        pair_dir = root / row.pair
        if not pair_dir.is_dir():
            continue
        cells = pair_cells(row, pair_dir)
        for c in cells:
            rows.append([row.pair, c.role, _fmt(c.published), _stat_text(c.last), _stat_text(c.best),
                         _fmt(c.delta, signed=True), c.verdict, row.source[c.role]])
        if warning := teacher_warning(cells):
            warnings.append(f"{row.pair}: {warning}")
    return rows, warnings


def markdown(rows: list[list[str]], warnings: list[str], title: str) -> str:
    lines = [f"# {title}\n", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [f"\nΔ = our last-epoch mean − published. `within`: the published number is within {SPREAD_STDS:g} sample "
             "stds of our mean. Sources: results/published/README.md."]
    notes += [f"\n**warning** {w}" for w in warnings]
    return "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return buffer.getvalue()
