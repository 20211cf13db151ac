"""Hinton et al. (2015) section 3's omitted-class experiment: errors overall and on the class(es) the
student's transfer set lacked, before and after the paper's output-bias correction.

A student that never saw a class learns too low a bias for it; the paper raises that class's output bias by
a constant b (3.5 there, chosen on the test set). Here b is chosen per run on the validation split (the
fewest validation errors over BIAS_GRID, the smallest b on a tie), and only then is the test split scored.
Adding b to the omitted classes' logits is the same as adding it to their output-layer bias.

    python -m kdrun.report.omitted_class <runs folder> --teacher <teacher run> --out results/hinton_omit

reads every finished run below the folder whose config omits classes (dataset.omit_classes), loads its
checkpoints/last.pt (weights_only), and writes table.md/.csv (mean ± std over seeds) and runs.csv (one row
per run). Exit status 2, with one line on stderr, for a folder without such runs or a bad run directory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdrun.sources.data.transfer import omitted_classes
from kdrun.deploy.student import find_run_dirs, load_run
from kdrun.errors import KdrunError
from kdrun.io import atomic_write_text
from kdrun.report.tables import markdown_table, run_table_command, to_csv

BIAS_GRID = tuple(step * 0.25 for step in range(81))  # 0 to 20: the paper's 3.5 lies well inside
EVAL_BATCH = 1000


def shifted_logits(logits: Tensor, classes: list[int], bias: float) -> Tensor:
    """The logits with `bias` added to each of `classes` (their output bias raised by `bias`)."""
    shifted = logits.clone()
    shifted[:, classes] += bias
    return shifted


def count_errors(logits: Tensor, labels: Tensor, classes: list[int], bias: float) -> tuple[int, int]:
    """(misclassified images, misclassified images of `classes`) after raising those classes' bias."""
    wrong = shifted_logits(logits, classes, bias).argmax(1) != labels
    in_classes = torch.isin(labels, torch.tensor(classes, device=labels.device))
    return int(wrong.sum()), int((wrong & in_classes).sum())


def choose_bias(logits: Tensor, labels: Tensor, classes: list[int], grid=BIAS_GRID) -> float:
    """The b of `grid` with the fewest errors on (logits, labels): the validation split's; smallest on a tie."""
    return min(grid, key=lambda b: (count_errors(logits, labels, classes, b)[0], b))


@torch.inference_mode()
def logits_of(model, images: Tensor, precision: str = "fp32") -> Tensor:
    """A model's logits over uint8 images, in batches, in the precision the run evaluated in (metrics.json's
    `precision`), so that the uncorrected counts are the run's own."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        return torch.cat([model(images[i:i + EVAL_BATCH]).float() for i in range(0, len(images), EVAL_BATCH)])


@dataclass
class RunResult:
    run: str
    role: str  # teacher, scratch or kd
    seed: int
    omitted: str  # the omitted classes' labels, space-separated
    omitted_test_images: int
    bias: float  # b chosen on validation (0 for the teacher: it saw every class)
    test_errors: int
    omitted_errors: int
    test_errors_corrected: int
    omitted_errors_corrected: int
    val_errors: int
    val_errors_corrected: int
    test_images: int
    wall_time_s: float


def measure_run(run_dir: Path, *, teacher_of: list[int] | None = None) -> RunResult:
    """Score one run. A student's omitted classes come from its config; a teacher (`teacher_of` = the
    students' omitted classes) is scored on those classes without a correction."""
    run = load_run(run_dir)
    data = run.load_data()
    if data.val_x is None:
        raise KdrunError(f"run {str(run_dir)!r} has no validation split to choose the bias on "
                         "(train with dataset.val_fraction > 0)")
    classes = teacher_of if teacher_of is not None else omitted_classes(data, run.dataset_cfg.get("omit_classes"))
    model = run.raw_model(data)
    precision = run.metrics.get("precision", "fp32")
    val, test = logits_of(model, data.val_x, precision), logits_of(model, data.test_x, precision)
    bias = 0.0 if teacher_of is not None else choose_bias(val, data.val_y, classes)
    test_errors, omitted_errors = count_errors(test, data.test_y, classes, 0.0)
    corrected, omitted_corrected = count_errors(test, data.test_y, classes, bias)
    role = "teacher" if teacher_of is not None else run.metrics.get("strategy", run.config["strategy"]["name"])
    return RunResult(
        run=str(run_dir), role=role, seed=int(run.config["seed"]), omitted=" ".join(map(str, classes)),
        omitted_test_images=int(torch.isin(data.test_y, torch.tensor(classes)).sum()), bias=bias,
        test_errors=test_errors, omitted_errors=omitted_errors, test_errors_corrected=corrected,
        omitted_errors_corrected=omitted_corrected, val_errors=count_errors(val, data.val_y, classes, 0.0)[0],
        val_errors_corrected=count_errors(val, data.val_y, classes, bias)[0], test_images=len(data.test_y),
        wall_time_s=float(run.metrics.get("wall_time_s", float("nan"))))


def _mean_std(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


TABLE_COLUMNS = ["trained as", "seeds", "test errors", "errors on omitted", "b (val)",
                 "test errors, b", "errors on omitted, b", "wall s/run"]


def group_rows(results: list[RunResult]) -> list[dict]:
    """One row per role (teacher, scratch, kd): mean ± std over seeds, before and after the correction."""
    order = {"teacher": 0, "scratch": 1, "kd": 2}
    rows = []
    for role in sorted({r.role for r in results}, key=lambda role: (order.get(role, 3), role)):
        members = [r for r in results if r.role == role]
        rows.append({
            "trained as": role, "seeds": len(members),
            "test errors": _mean_std([r.test_errors for r in members]),
            "errors on omitted": _mean_std([r.omitted_errors for r in members]),
            "b (val)": " ".join(f"{r.bias:g}" for r in members),
            "test errors, b": _mean_std([r.test_errors_corrected for r in members]),
            "errors on omitted, b": _mean_std([r.omitted_errors_corrected for r in members]),
            "wall s/run": round(statistics.fmean(r.wall_time_s for r in members), 1),
        })
    return rows


def find_student_runs(root: Path) -> list[Path]:
    """Every run below `root` whose config omits a class."""
    runs = []
    for run_dir in find_run_dirs(root):
        run = load_run(run_dir)
        if run.metrics.get("status") == "completed" and run.dataset_cfg.get("omit_classes"):
            runs.append(run_dir)
    if not runs:
        raise KdrunError(f"no finished run below {str(root)!r} omits a class (dataset.omit_classes=[...])")
    return runs


def write_tables(root: Path, out: Path, teacher: Path | None) -> list[Path]:
    """Measure every omitted-class run below `root` (and the teacher), then write the tables to `out`."""
    results = [measure_run(run_dir) for run_dir in find_student_runs(root)]
    omitted = {r.omitted for r in results}
    if len(omitted) > 1:
        raise KdrunError(f"the runs below {str(root)!r} omit different classes ({', '.join(sorted(omitted))}); "
                         "give one experiment's folder")
    if teacher is not None:
        results.insert(0, measure_run(teacher, teacher_of=[int(c) for c in results[0].omitted.split()]))
    first = results[-1]
    out.mkdir(parents=True, exist_ok=True)
    rows = group_rows(results)
    header = (f"Test errors of {first.test_images} test images, of which {first.omitted_test_images} are of the "
              f"omitted class(es) {first.omitted}; final weights, mean ± std over seeds. b: the omitted classes' "
              "output bias raised by b, chosen per run on the validation split.\n\n")
    atomic_write_text(out / "table.md", header + markdown_table(TABLE_COLUMNS, [list(r.values()) for r in rows]))
    atomic_write_text(out / "table.csv", to_csv(TABLE_COLUMNS, rows))
    runs = [asdict(r) for r in results]
    atomic_write_text(out / "runs.csv", to_csv(list(runs[0]), runs))
    return [out / "table.md", out / "table.csv", out / "runs.csv"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdrun.report.omitted_class",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the folder the omitted-class students ran into")
    parser.add_argument("--teacher", type=Path, help="the teacher's run directory (a row without correction)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return run_table_command(lambda: write_tables(args.runs, args.out, args.teacher), args.out)


if __name__ == "__main__":
    sys.exit(main())
