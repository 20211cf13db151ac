"""Reading finished (or failed) runs back from disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class JobRecord:
    path: Path
    overrides: dict[str, str]  # key -> value as typed on the command line
    metrics: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.metrics.get("status", "failed")

    @property
    def error(self) -> str:
        if self.status == "completed":
            return ""
        return self.metrics.get("error", "no metrics.json: the job died before finishing")


def parse_overrides(items: list[str]) -> dict[str, str]:
    pairs = (item.lstrip("+~").split("=", 1) for item in items)
    return {key: value for key, *rest in pairs for value in (rest or [""])}


def read_job(run_dir: Path) -> JobRecord:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return JobRecord(run_dir, parse_overrides(overrides or []), metrics)


def job_number(run_dir: Path) -> int:
    head = run_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def read_sweep(sweep_dir: Path) -> list[JobRecord]:
    """Every job directory of a Hydra multirun, in job order."""
    job_dirs = [p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()]
    return [read_job(p) for p in sorted(job_dirs, key=lambda p: (job_number(p), p.name))]
