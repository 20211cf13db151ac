"""Grouping jobs that differ only in their seed, and mean ± std over the group."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from kdrun.report.jobs import JobRecord

SEED_KEYS = ("seed",)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (n-1); 0 when n == 1
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def stat(values: list[float]) -> Stat:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stat(statistics.fmean(values), std, len(values))


def group_label(job: JobRecord) -> tuple[tuple[str, str], ...]:
    """The job's overrides without the seed: jobs with equal labels are repeats."""
    return tuple(sorted((k, v) for k, v in job.overrides.items() if k not in SEED_KEYS))


def group_by_seed(jobs: list[JobRecord]) -> dict[tuple, list[JobRecord]]:
    """Completed jobs grouped by their non-seed overrides, in first-seen order."""
    groups: dict[tuple, list[JobRecord]] = {}
    for job in jobs:
        if job.status == "completed":
            groups.setdefault(group_label(job), []).append(job)
    return groups
