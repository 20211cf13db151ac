"""Reading finished (or failed) runs back from disk, and finding them under any directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from kdrun.errors import KdrunError


@dataclass
class JobRecord:
    path: Path
    overrides: dict[str, str]  # key -> value as typed on the command line
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # config.yaml flattened to dotted keys; {} if missing

    @property
    def status(self) -> str:
        return self.metrics.get("status", "failed")

    @property
    def error(self) -> str:
        if self.status == "completed":
            return ""
        if self.status == "interrupted" and self.metrics.get("resume"):
            return f"interrupted — resume with {self.metrics['resume']}"
        return self.metrics.get("error", "no metrics.json: the job died before finishing (or is still running)")

    def value_of(self, key: str):
        """What the job ran with for a command-line key: its config.yaml's value, else the override as
        typed when the job wrote no config."""
        if key in self.config:
            value = self.config[key]
            return list(value) if isinstance(value, tuple) else value
        return self.overrides.get(key, "")

    @property
    def typed_overrides(self) -> dict:
        """Override values parsed as YAML, as Hydra does: "4" -> 4, "0.5" -> 0.5."""
        typed = {}
        for key, value in self.overrides.items():
            try:
                typed[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                typed[key] = value
        return typed

    @property
    def seed(self):
        return self.config.get("seed", self.typed_overrides.get("seed", self.metrics.get("seed")))

    @cached_property
    def cwd(self) -> Path | None:
        """The directory the job ran in (Hydra's runtime.cwd), where its relative paths start."""
        try:
            hydra_cfg = yaml.safe_load((self.path / ".hydra" / "hydra.yaml").read_text())
            return Path(hydra_cfg["hydra"]["runtime"]["cwd"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None

    def resolve(self, recorded: str) -> Path:
        """A path the job recorded (e.g. teacher_path), made usable from here."""
        path = Path(recorded)
        if not path.is_absolute() and self.cwd is not None and (self.cwd / path).exists():
            return self.cwd / path
        return path


def parse_overrides(items: list[str]) -> dict[str, str]:
    pairs = (item.lstrip("+~").split("=", 1) for item in items)
    return {key: value for key, *rest in pairs for value in (rest or [""])}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists become tuples so values can be compared and hashed."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:  # cut short by a crash: the job is reported as failed
        return {"status": "failed", "error": f"{path.name} is unreadable (cut short?)"}


def read_job(run_dir: Path) -> JobRecord:
    run_dir = Path(run_dir)
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    config = _read_yaml(run_dir / "config.yaml")
    metrics = _read_json(run_dir / "metrics.json")
    if (run_dir / "config.yaml").is_file() and not isinstance(config, dict):
        # Without its config a job's setting is unknown: never guess one (it would be a group of its own).
        metrics = {"status": "failed", "error": "config.yaml is unreadable (not a YAML mapping); the job's "
                                                "setting is unknown, so it is in no group"}
    return JobRecord(run_dir, parse_overrides(overrides), metrics, flatten(config) if isinstance(config, dict) else {})


def job_number(run_dir: Path) -> int:
    head = run_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def is_job_dir(path: Path) -> bool:
    """A run or sweep job: Hydra's .hydra/, or kdrun's config.yaml beside a metrics file or checkpoints.
    A config.yaml alone is not enough: kdrun's own conf/ folder (and many others) hold one."""
    if (path / ".hydra").is_dir():
        return True
    return (path / "config.yaml").is_file() and any(
        (path / name).exists() for name in ("metrics.json", "metrics.jsonl", "checkpoints"))


def read_sweep(sweep_dir: Path) -> list[JobRecord]:
    """Every job directory of a Hydra multirun, in job order."""
    job_dirs = [p for p in Path(sweep_dir).iterdir() if is_job_dir(p)]
    return [read_job(p) for p in sorted(job_dirs, key=lambda p: (job_number(p), p.name))]


def find_jobs(paths: list[str | os.PathLike]) -> list[JobRecord]:
    """The jobs in any mix of run directories, sweep directories and directories above them.

    Order: the paths as given; inside a sweep, job order. A job reached twice is read once.
    """
    jobs, seen = [], set()
    for given in map(Path, paths):
        if not given.is_dir():
            raise KdrunError(f"{str(given)!r} is not a directory; give run or sweep directories "
                             "(or a folder above them)")
        found = [given] if is_job_dir(given) else _job_dirs_below(given)
        if not found:
            raise KdrunError(f"no runs under {str(given)!r}: a run directory holds config.yaml and .hydra/")
        for job_dir in found:
            if job_dir.resolve() not in seen:
                seen.add(job_dir.resolve())
                jobs.append(read_job(job_dir))
    return jobs


def _job_dirs_below(root: Path) -> list[Path]:
    found = []
    for parent, dirs, _ in os.walk(root):
        dirs.sort(key=lambda name: (job_number(Path(name)), name))
        jobs_here = [d for d in dirs if is_job_dir(Path(parent) / d)]
        found += [Path(parent) / d for d in jobs_here]
        dirs[:] = [d for d in dirs if d not in jobs_here and not d.startswith(".")]  # no runs inside runs
    return found
