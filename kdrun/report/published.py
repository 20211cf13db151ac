"""Our reproduction beside the published numbers: per pair, the teacher, the student from scratch and each
method, as `results/published/cifar100.csv` lists them (one published number per row, with its paper, its
repository, and whether it is a last- or a best-epoch accuracy).

Each cell shows the published accuracy, ours at the last epoch and at the best epoch (mean ± sample std over
seeds), the difference between the published number and ours of the same kind (a best-epoch number against
our best epoch, a last-epoch one against our last), and a verdict: `within` when the published number lies
within two sample stds of our mean (about the spread of our seeds), else `ours higher` / `ours lower`; one
seed has no spread to judge by.
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

REFERENCES = ("teacher", "scratch")  # the rows every pair has besides its methods
EPOCHS = ("last", "best")
COLUMNS = ("experiment", "teacher", "student", "method", "acc", "epoch", "source", "repo", "note")
SPREAD_STDS = 2.0


@dataclass(frozen=True)
class Published:
    experiment: str  # the preset: experiment=<experiment>
    teacher: str
    student: str
    method: str  # teacher, scratch, or a method as `kdrun.cli.reproduce --methods` names it
    acc: float
    epoch: str  # last | best: which epoch the paper reports
    source: str  # the paper and table
    repo: str
    note: str = ""

    @property
    def pair(self) -> str:
        return self.experiment.removeprefix("cifar100_")


def read_published(path: str | Path) -> list[Published]:
    """Parse the published-numbers CSV; a malformed row is an error naming the row and column."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if missing := [c for c in COLUMNS if c not in (reader.fieldnames or [])]:
            raise KdrunError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
        for line, record in enumerate(reader, start=2):
            text = (record["acc"] or "").strip()
            try:
                acc = float(text)
            except ValueError:
                raise KdrunError(f"{path}:{line}: acc must be a percentage, got {text!r}") from None
            if not 0 <= acc <= 100:
                raise KdrunError(f"{path}:{line}: acc must be within 0..100, got {text!r}")
            if record["epoch"] not in EPOCHS:
                raise KdrunError(f"{path}:{line}: epoch must be one of {', '.join(EPOCHS)}, got {record['epoch']!r}")
            if not record["source"].strip() or not record["repo"].strip():
                raise KdrunError(f"{path}:{line}: a published number without its source and repository")
            rows.append(Published(**{**{c: record[c].strip() for c in COLUMNS}, "acc": acc}))
    return rows


def cifar100_pairs(numbers: list[Published]) -> list[str]:
    """The CIFAR-100 pairs the numbers cover, in file order."""
    return list(dict.fromkeys(n.pair for n in numbers if n.experiment.startswith("cifar100_")))


@dataclass(frozen=True)
class Cell:
    method: str
    published: Published | None
    last: Stat | None  # last-epoch test accuracy over seeds
    best: Stat | None  # best-epoch test accuracy over seeds

    @property
    def ours(self) -> Stat | None:
        """Ours of the published number's kind: best epoch against a best-epoch number, else last."""
        return self.best if self.published is not None and self.published.epoch == "best" else self.last

    @property
    def delta(self) -> float | None:
        if self.published is None or self.ours is None:
            return None
        return self.ours.mean - self.published.acc

    @property
    def verdict(self) -> str:
        if self.last is None:
            return "not run"
        if self.published is None:
            return "no published number"
        if self.ours.n < 2:
            return "1 seed: no spread"
        if abs(self.delta) <= SPREAD_STDS * self.ours.std:
            return "within"
        return "ours higher" if self.delta > 0 else "ours lower"


def measured(target_dir: Path) -> tuple[Stat | None, Stat | None]:
    """(last-epoch, best-epoch) accuracy over the completed jobs under `target_dir`."""
    if not target_dir.is_dir():
        return None, None
    jobs = [job for job in find_jobs([target_dir]) if job.status == "completed"]
    if not jobs:
        return None, None
    return stat([j.metrics["final_test_acc"] for j in jobs]), stat([j.metrics["best_test_acc"] for j in jobs])


def pair_cells(numbers: list[Published], pair: str, pair_dir: Path, methods: list[str]) -> list[Cell]:
    by_method = {n.method: n for n in numbers if n.pair == pair}
    return [Cell(m, by_method.get(m), *measured(pair_dir / m)) for m in (*REFERENCES, *methods)]


def teacher_warning(cells: list[Cell]) -> str | None:
    """A teacher no better than the student from scratch cannot be expected to help it."""
    by_method = {c.method: c for c in cells}
    teacher, scratch = by_method["teacher"].last, by_method["scratch"].last
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


HEADER = ["pair", "method", "published", "epoch", "ours last epoch (mean ± std)", "ours best epoch (mean ± std)",
          "Δ ours − published", "verdict", "published in"]


def table_rows(numbers: list[Published], root: Path, pairs: list[str], methods: list[str]) -> tuple[list[list[str]], list[str]]:
    """Every (pair, method) row of the pairs that have a directory under `root`, and the warnings."""
    rows, warnings = [], []
    for pair in pairs:
        pair_dir = root / pair
        if not pair_dir.is_dir():
            continue
        cells = pair_cells(numbers, pair, pair_dir, methods)
        for c in cells:
            p = c.published
            rows.append([pair, c.method, _fmt(p.acc if p else None), p.epoch if p else "", _stat_text(c.last),
                         _stat_text(c.best), _fmt(c.delta, signed=True), c.verdict,
                         f"{p.source}; {p.repo}" + (f" ({p.note})" if p.note else "") if p else ""])
        if warning := teacher_warning(cells):
            warnings.append(f"{pair}: {warning}")
    return rows, warnings


def markdown(rows: list[list[str]], warnings: list[str], title: str) -> str:
    lines = [f"# {title}\n", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [f"\nΔ = our mean of the published number's kind (its `epoch`: best or last) − published. `within`: the "
             f"published number is within {SPREAD_STDS:g} sample stds of our mean. Sources: results/published/README.md."]
    notes += [f"\n**warning** {w}" for w in warnings]
    return "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    return buffer.getvalue()
