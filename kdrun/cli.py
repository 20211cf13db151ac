"""`kdrun`: compose the config with Hydra, validate, run. Thin on purpose."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdrun.console import console
from kdrun.data import DatasetNotFoundError
from kdrun.errors import KdrunError
from kdrun.report.tables import print_run_summary
from kdrun.run import record_failure, run_experiment

# Errors whose message is the whole story: print it, no traceback.
USER_ERRORS = (KdrunError, DatasetNotFoundError)

_failed_jobs: list[str] = []


@hydra.main(version_base="1.3", config_path="pkg://kdrun.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        summary = run_experiment(cfg, run_dir, overrides)
        if not multirun:
            print_run_summary(summary, run_dir)
        return summary
    except Exception as exc:
        record_failure(run_dir, exc, overrides)
        if not multirun and not isinstance(exc, USER_ERRORS):
            raise
        if isinstance(exc, USER_ERRORS):
            console.print(f"[bold red]error:[/] {exc}")
        else:
            console.print(traceback.format_exc())
        if not multirun:
            sys.exit(2)
        # In a sweep one failed job is a row in the summary, not a lost sweep.
        _failed_jobs.append(" ".join(overrides))
        return None


def main() -> None:
    _hydra_main()
    if _failed_jobs:
        console.print(f"[bold red]{len(_failed_jobs)} job(s) failed:[/] " + "; ".join(_failed_jobs))
        sys.exit(1)


if __name__ == "__main__":
    main()
