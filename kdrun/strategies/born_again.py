"""Born-again networks (Furlanello et al. 2018): generation k+1 is distilled from generation k
of the same architecture.

Generation 0 is student.arch trained on the labels with the teacher recipe
(teacher.epochs, teacher.seed), served like any teacher: teacher.checkpoint,
the cache, or trained first. Generations 1..N each distil a fresh student
(initialised from seed + k) from the previous generation's final weights with
the `loss` group. Generations 1..N-1 write a run each under
<run>/generation_<k>/; the last generation is the run itself, and its
metrics.json carries the table of every generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.table import Table

from kdrun.console import console
from kdrun.data import BatchAugment, DatasetSplits
from kdrun.io import atomic_write_json
from kdrun.runtime import Runtime
from kdrun.strategies.base import Strategy
from kdrun.strategies.build import distill_from, with_teacher
from kdrun.strategies.features import plan_feature_terms

Fit = Callable[[Strategy, Path, dict], dict]  # (strategy, run dir, extra) -> metrics.json summary


def fit_generations(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime, run_dir: Path,
                    fit: Fit, extra: dict) -> dict:
    """Train generations 1..strategy.generations; returns the last one's summary plus the table."""
    from kdrun.teachers import Teacher, load_model, resolve_teacher

    arch, count = cfg.student.arch, cfg.strategy.generations
    features = plan_feature_terms(cfg.loss, arch, arch, data)  # before generation 0 trains
    teacher = resolve_teacher(with_teacher(cfg, arch, cfg.teacher.checkpoint), data, augment, runtime)
    table = [{"generation": 0, "arch": arch, "teacher": f"labels ({teacher.source})",
              "final_test_acc": teacher.test_acc, "best_test_acc": None, "wall_time_s": None,
              "path": str(teacher.path)}]
    for k in range(1, count + 1):
        out_dir = run_dir if k == count else run_dir / f"generation_{k}"
        strategy = distill_from(cfg, data, runtime, teacher, features, seed=cfg.seed + k)
        summary = fit(strategy, out_dir, {**extra, "generation": k, "generations": count})
        weights = out_dir / "checkpoints" / "last.pt"  # the final weights teach, as for any teacher
        table.append({"generation": k, "arch": arch, "teacher": f"generation {k - 1}",
                      "final_test_acc": summary["final_test_acc"], "best_test_acc": summary["best_test_acc"],
                      "wall_time_s": summary["wall_time_s"], "path": str(weights)})
        if k < count:
            model, _ = load_model(weights, data, runtime, role=f"generation {k}")
            teacher = Teacher(model, summary["final_test_acc"], f"generation {k}", weights)
    summary["generations_table"] = table
    atomic_write_json(run_dir / "metrics.json", summary)
    console.print(generations_table(table))
    return summary


def generations_table(rows: list[dict]) -> Table:
    table = Table(title="born-again generations")
    for column in ("generation", "learns from", "final test acc %", "best test acc %", "wall time s"):
        table.add_column(column, justify="left" if column == "learns from" else "right")
    for row in rows:
        table.add_row(str(row["generation"]), row["teacher"], f"{row['final_test_acc']:.2f}",
                      *("" if row[k] is None else f"{row[k]:.2f}" for k in ("best_test_acc", "wall_time_s")))
    return table
