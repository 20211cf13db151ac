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

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from kdrun.console import results
from kdrun.sources.model_sources import arch_of
from kdrun.keys import key
from kdrun.strategies.base import Fit, Setup, register
from kdrun.methods.terms.compose import build_feature_terms
from kdrun.methods.terms.feature.stages import FeatureContext
from kdrun.strategies.kd import KD, feature_context
from kdrun.teachers.resolve import Teacher, load_model, resolve_teacher, with_teacher


@register
class BornAgain(KD):
    """A runner of several fits; each generation trains as a KD strategy."""

    name = "born_again"
    transfer_set = None  # its generations train one another on the same split: not yet with a transfer set
    mixes = False

    @dataclass
    class Config:
        generations: int = key(low=1)

    @classmethod
    def from_config(cls, setup: Setup) -> KD:
        """Generation 1: the first student distilled from generation 0."""
        context, teacher = cls._generation_zero(setup)
        return KD.from_teacher(setup, teacher, context, seed=setup.cfg.seed + 1)

    @classmethod
    def _generation_zero(cls, setup: Setup) -> tuple[FeatureContext, Teacher]:
        cfg = setup.cfg
        arch = cfg.student.arch
        context = feature_context(cfg, setup.data, teacher_arch=arch_of(cfg.student))
        build_feature_terms(cfg, context)  # checks every stage choice before generation 0 trains
        teacher = resolve_teacher(with_teacher(cfg, arch, cfg.teacher.checkpoint), setup.data, setup.augment,
                                  setup.runtime)
        return context, teacher

    @classmethod
    def run(cls, setup: Setup, run_dir: Path, fit: Fit) -> dict:
        """Train generations 1..strategy.generations; returns the last one's summary plus the table."""
        cfg = setup.cfg
        arch, count = cfg.student.arch, cfg.strategy.generations
        context, teacher = cls._generation_zero(setup)
        table = [{"generation": 0, "arch": arch, "teacher": f"labels ({teacher.source})",
                  "final_test_acc": teacher.test_acc, "best_test_acc": None, "wall_time_s": None,
                  "path": str(teacher.path)}]
        for k in range(1, count + 1):
            out_dir = run_dir if k == count else run_dir / f"generation_{k}"
            strategy = KD.from_teacher(setup, teacher, context, seed=cfg.seed + k)
            summary = fit(strategy, out_dir, {"generation": k, "generations": count})
            weights = out_dir / "checkpoints" / "last.pt"  # the final weights teach, as for any teacher
            table.append({"generation": k, "arch": arch, "teacher": f"generation {k - 1}",
                          "final_test_acc": summary["final_test_acc"], "best_test_acc": summary["best_test_acc"],
                          "wall_time_s": summary["wall_time_s"], "path": str(weights)})
            if k < count:
                model, _ = load_model(weights, setup.data, setup.runtime, role=f"generation {k}")
                teacher = Teacher(model, summary["final_test_acc"], f"generation {k}", weights)
        results.print(generations_table(table))
        return {**summary, "generations_table": table}


def generations_table(rows: list[dict]) -> Table:
    table = Table(title="born-again generations")
    for column in ("gen", "learns from", "final acc %", "best acc %", "time s"):
        table.add_column(column, justify="left" if column == "learns from" else "right")
    for row in rows:
        table.add_row(str(row["generation"]), row["teacher"], f"{row['final_test_acc']:.2f}",
                      *("" if row[k] is None else f"{row[k]:.2f}" for k in ("best_test_acc", "wall_time_s")))
    return table
