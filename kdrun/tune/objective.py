"""What an Optuna study optimises: `objective=` names metrics of a job's metrics.json summary, which is what
every kdrun job returns to its sweeper.

Validation and cost metrics only: a setting chosen on the test split would make the test number a
selected maximum, not an estimate (the study's test number comes from re-running the best setting).
"""

from __future__ import annotations

import math

from kdrun.errors import ConfigError
from kdrun.config.schema import OBJECTIVES

# objective name -> (the summary key that holds it, the direction Optuna optimises it in)
METRICS = {
    "val_acc": ("final_val_acc", "maximize"),       # the last epoch's, as the tables report
    "best_val_acc": ("best_val_acc", "maximize"),   # the best epoch's: optimistic, the epoch was chosen on it
    "params": ("params", "minimize"),
    "size_mb": ("size_mb", "minimize"),
    "latency_ms": ("latency_ms", "minimize"),        # batch 1, measured after the job (kdrun/tune/latency.py)
}
assert tuple(METRICS) == OBJECTIVES


def objective_names(value) -> list[str]:
    """`objective=` as a list of metric names, refusing a test-split metric or an unknown one."""
    names = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    if not names:
        raise ConfigError(f"objective=[]: name at least one metric; allowed: {', '.join(OBJECTIVES)}")
    for name in names:
        if "test" in name:
            raise ConfigError(f"objective={name} is measured on the test split, and a setting chosen on the test "
                              f"split has no honest test number left; optimise a validation metric "
                              f"(objective=val_acc, the default) and read the best setting's test accuracy "
                              f"in study.md, where it is re-run over seeds")
        if name not in METRICS:
            raise ConfigError(f"objective={name} is not allowed; allowed: {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objective={names}: a metric is named twice")
    return names


def directions(names: list[str]) -> list[str]:
    return [METRICS[name][1] for name in names]


def objective_values(summary: dict | None, names: list[str]) -> list[float]:
    """The job's values for `names`; ValueError (the trial then fails) where the summary lacks one."""
    if not summary or summary.get("status") != "completed":
        raise ValueError("the job did not complete (its metrics.json says why)")
    values = []
    for name in names:
        key = METRICS[name][0]
        value = summary.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            hint = " (the run had no validation split)" if key.endswith("val_acc") else ""
            raise ValueError(f"the job's metrics.json has no {key}{hint}")
        values.append(float(value))
    return values
