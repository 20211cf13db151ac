"""From jobs to what a table shows: groups of seeds, what was swept, and the references.

Two completed jobs are repeats of one setting when their resolved configs differ
only in seed keys. That holds across invocations: `kdrun seed=0 T=2` today and a
`kdrun -m T=2 seed=1,2` sweep tomorrow make one group of three, and every table
shows its mean, sample standard deviation and n, never one seed alone.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from kdrun.keys import SHORT_KEYS
from kdrun.report.jobs import JobRecord
from kdrun.config.schema import keys_with_role

SEED_KEYS = keys_with_role("seed")
# Keys that say where files go, how a run is shown or how fast it runs, not what is trained
# (kdrun.config.schema roles; teacher.cache is speed: the cache serves the live teacher's rounded targets).
NOT_SETTINGS = keys_with_role("location", "display", "speed")
# What a job that distills nothing does not use.
UNUSED_BY_SCRATCH = ("loss.", "teacher.")
# How keys are shown: as people type them on the command line. When several keys vary
# together (another experiment preset), the first of them in this order names the family.
DISPLAY_NAMES = {
    "strategy.name": "strategy", "loss.name": "loss", "student.arch": "student", "teacher.arch": "teacher",
    "dataset.name": "dataset", "trainer.epochs": "epochs", "optim.name": "optim",
    "trainer.batch_size": "batch_size", "device.name": "device", "dataset.labelled_fraction": "labelled",
}
_PRIORITY = {key: i for i, key in enumerate(DISPLAY_NAMES)}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (n - 1); nan when n == 1, where it is undefined
    n: int

    def text(self, digits: int = 2) -> str:
        std = "n/a" if math.isnan(self.std) else f"{self.std:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {std}"

    def __str__(self) -> str:
        return f"{self.text()} (n={self.n})"


def stat(values: list[float]) -> Stat:
    if not values:
        raise ValueError("no values to aggregate")
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return Stat(statistics.fmean(values), std, len(values))


def is_temperature(key: str) -> bool:
    """The short key T, or a loss term's temperature (loss.terms.<term>.T): shown as T, swept first."""
    return key == "T" or (key.startswith("loss.terms.") and key.endswith(".T"))


def display_name(key: str) -> str:
    """T for a temperature; a term's key as <term>.<key> (ce.weight: loss.terms.ce.weight on the command
    line), short enough for an 80-column table; other keys as typed."""
    if is_temperature(key):
        return "T"
    return key.removeprefix("loss.terms.") if key.startswith("loss.terms.") else DISPLAY_NAMES.get(key, key)


def _priority(key: str) -> int:
    return -1 if is_temperature(key) else _PRIORITY.get(key, len(_PRIORITY))


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def setting(job: JobRecord) -> dict:
    """What was trained: the resolved config without seeds, paths and unused keys.

    A job without config.yaml (it failed before writing one) falls back to its
    command-line overrides.
    """
    if job.config:
        values = dict(job.config)
    else:
        values = job.typed_overrides  # as typed: T stays T
    strategy = values.get("strategy.name", job.metrics.get("strategy"))
    # With a config, a short key's value is in the group key it feeds; without one, it is all there is.
    drop = [*SEED_KEYS, *NOT_SETTINGS, *(SHORT_KEYS if job.config else ())]
    if strategy == "scratch":
        drop += UNUSED_BY_SCRATCH
    return {k: canonical(v) for k, v in sorted(values.items()) if not _matches(k, drop)}


def canonical(value):
    """One form per meaning, so that T=4 and T=4.0 (YAML int and float) are one setting: whole floats
    become ints; lists are compared element by element."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    return value


@dataclass
class Group:
    """Completed jobs that differ only in their seeds."""

    setting: dict
    jobs: list[JobRecord] = field(default_factory=list)
    # Jobs that repeat a member's setting and seeds exactly (e.g. scratch jobs of a sweep over T,
    # which scratch ignores): the same measurement again, so not counted in n.
    duplicates: list[JobRecord] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.jobs[0].metrics

    @property
    def strategy(self) -> str:
        return str(self.setting.get("strategy.name", self.metrics.get("strategy", "?")))

    @property
    def distills(self) -> bool:
        return self.strategy != "scratch"

    @property
    def arch(self) -> str:
        return self.metrics.get("arch", "?")

    @property
    def dataset(self) -> str:
        return self.metrics.get("dataset", str(self.setting.get("dataset.name", "?")))

    @property
    def seeds(self) -> list:
        return [job.seed for job in self.jobs]

    def add(self, job: JobRecord) -> None:
        if any(seeds_of(job) == seeds_of(member) for member in self.jobs):
            self.duplicates.append(job)
        else:
            self.jobs.append(job)

    def stat(self, metric: str) -> Stat:
        return stat([float(job.metrics[metric]) for job in self.jobs])


def group_by_seed(jobs: list[JobRecord]) -> list[Group]:
    """Completed jobs grouped by setting, in first-seen order."""
    groups: dict[str, Group] = {}
    for job in jobs:
        if job.status != "completed":
            continue
        values = setting(job)
        key = json.dumps(values, sort_keys=True, default=str)
        groups.setdefault(key, Group(values)).add(job)
    return list(groups.values())


def seeds_of(job: JobRecord) -> tuple:
    return tuple(job.config.get(k, job.typed_overrides.get(k)) for k in SEED_KEYS)


def swept_keys(groups: list[Group]) -> list[str]:
    """Setting keys whose value differs between groups, one per family of keys that vary together.

    `epochs=10,20` moves trainer.epochs and teacher.epochs in step: that is one
    swept key, shown as `epochs`.
    """
    if len(groups) < 2:
        return []
    keys = sorted({k for g in groups for k in g.setting})
    families: dict[tuple, list[str]] = {}
    for key in keys:
        values = [json.dumps(g.setting.get(key), default=str) for g in groups]
        if len(set(values)) > 1:
            pattern = tuple(values.index(v) for v in values)  # which groups share a value
            families.setdefault(pattern, []).append(key)
    chosen = [min(family, key=lambda k: (_priority(k), len(k), k)) for family in families.values()]
    return sorted(chosen, key=lambda k: (not is_temperature(k), k))


def is_numeric(groups: list[Group], key: str) -> bool:
    values = [g.setting.get(key) for g in groups]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


@dataclass
class TeacherRef:
    """One teacher, or several that differ only in their seed (their accuracies are the n)."""

    arch: str
    dataset: str
    params: int
    size_mb: float
    paths: list[str] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)
    job: JobRecord | None = None  # a job that used it: where relative teacher paths are resolved

    def stat(self) -> Stat:
        return stat(self.accs)


def _teacher_identity(job: JobRecord) -> str:
    """The teacher's recipe without its seed when kdrun trained it (recipe.json), else its file."""
    m = job.metrics
    recipe_file = job.resolve(m["teacher_path"]).parent / "recipe.json"
    try:
        recipe = json.loads(recipe_file.read_text())
        recipe.pop("seed", None)
        return json.dumps([m["teacher_arch"], recipe], sort_keys=True)
    except (OSError, ValueError):
        return json.dumps([m["teacher_arch"], m.get("dataset"), m["teacher_path"]])


def teacher_refs(groups: list[Group]) -> list[TeacherRef]:
    """The distinct teachers behind these groups, in first-seen order."""
    refs: dict[str, TeacherRef] = {}
    for group in groups:
        for job in group.jobs:
            m = job.metrics
            if "teacher_path" not in m or "teacher_test_acc" not in m:
                continue
            ref = refs.setdefault(_teacher_identity(job), TeacherRef(
                m["teacher_arch"], m.get("dataset", "?"), m["teacher_params"], m["teacher_size_mb"], job=job))
            if m["teacher_path"] not in ref.paths:
                ref.paths.append(m["teacher_path"])
                ref.accs.append(float(m["teacher_test_acc"]))
    return list(refs.values())


def teachers_own_runs(groups: list[Group], teachers: list[TeacherRef]) -> list[Group]:
    """The from-scratch groups whose checkpoints are these teachers (a teacher trained by its own kdrun run, e.g.
    reproduce's <pair>/teacher/): already a teacher row, so not a second, scratch one."""
    checkpoints = {ref.job.resolve(path).resolve() for ref in teachers for path in ref.paths if ref.job is not None}
    run_dirs = {c.parent.parent for c in checkpoints if c.parent.name == "checkpoints"}
    return [g for g in groups if not g.distills and all(job.path.resolve() in run_dirs for job in g.jobs)]


def scratch_reference(group: Group, scratch_groups: list[Group]) -> Group | None:
    """The from-scratch run of the same student on the same data, agreeing with `group` on most settings."""
    candidates = [s for s in scratch_groups if s.arch == group.arch and s.dataset == group.dataset]

    def disagreements(s: Group) -> int:
        common = (set(s.setting) & set(group.setting)) - {"strategy.name"}
        return sum(s.setting[k] != group.setting[k] for k in common)

    return min(candidates, key=disagreements, default=None)


@dataclass
class Study:
    """Everything a report says about a set of jobs."""

    jobs: list[JobRecord]
    groups: list[Group]
    subjects: list[Group]  # what the report is about: the distilled groups, or all when none distils
    scratch_refs: list[Group]
    teachers: list[TeacherRef]
    swept: list[str]

    @property
    def failed(self) -> list[JobRecord]:
        return [job for job in self.jobs if job.status not in ("completed", "interrupted")]

    @property
    def interrupted(self) -> list[JobRecord]:
        return [job for job in self.jobs if job.status == "interrupted"]

    @property
    def duplicates(self) -> list[JobRecord]:
        return [job for g in self.groups for job in g.duplicates]

    @property
    def numeric_swept(self) -> list[str]:
        return [k for k in self.swept if is_numeric(self.subjects, k)]

    def label(self, group: Group, keys: list[str] | None = None) -> str:
        """The group's values of the swept keys, e.g. `T=4 ce.weight=0.5`."""
        keys = self.swept if keys is None else keys
        return " ".join(f"{display_name(k)}={format_value(group.setting.get(k))}" for k in keys)


def format_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def study(jobs: list[JobRecord]) -> Study:
    groups = group_by_seed(jobs)
    distilled = [g for g in groups if g.distills]
    teachers = teacher_refs(distilled)
    own_runs = teachers_own_runs(groups, teachers)
    groups = [g for g in groups if all(g is not run for run in own_runs)]
    scratch = [g for g in groups if not g.distills]
    subjects = distilled or scratch
    refs: list[Group] = []
    if distilled:
        for group in distilled:
            ref = scratch_reference(group, scratch)
            if ref is not None and all(ref is not r for r in refs):
                refs.append(ref)
    return Study(jobs, groups, subjects, refs, teachers, swept_keys(subjects))

