"""`kdrun-export RUN_DIR [--format onnx|pt2|torchscript] [--int8] [--out DIR] [--speed]`.

Writes the student of a run, or of each run under a sweep directory, to RUN_DIR/export/ (or
--out, one folder per run when there are several), checked against PyTorch on the test split.
Exit status: 0 done; 1 an export disagreed with PyTorch; 2 a bad argument or run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdrun.console import console, results
from kdrun.deploy.export import FORMATS
from kdrun.errors import KdrunError

EXPORT_DIR = "export"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kdrun-export", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory, or a sweep directory")
    parser.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)} (default onnx)")
    parser.add_argument("--int8", action="store_true",
                        help="also write model.int8.onnx, post-training static int8, and measure its accuracy")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/export)")
    parser.add_argument("--speed", action="store_true",
                        help="measure latency (batch 1) and images/s (batch 64), PyTorch and onnxruntime, "
                             "1 thread and all; kdrun-report --deploy shows them")
    return parser.parse_args(argv)


def out_dir_for(run_dir: Path, out: Path | None, several: bool, root: Path) -> Path:
    if out is None:
        return run_dir / EXPORT_DIR
    return out / run_dir.relative_to(root) if several else out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kdrun.deploy.ship import report_line, ship_run  # torch and onnx load after the arguments pass
    from kdrun.deploy.student import find_run_dirs

    try:
        if args.format not in FORMATS:
            raise KdrunError(f"unknown --format {args.format!r}; allowed: {', '.join(FORMATS)}")
        runs = find_run_dirs(args.run_dir)
        disagree = 0
        for run_dir in runs:
            out = out_dir_for(run_dir, args.out, len(runs) > 1, args.run_dir)
            card = ship_run(run_dir, out, args.format, args.int8, args.speed)
            disagree += sum(not a["check"]["passed"] for k, a in card["artefacts"].items() if k != "int8")
            results.print(f"{run_dir} -> {out}", markup=False, highlight=False, soft_wrap=True)
            report_line(card)
    except KdrunError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    if disagree:
        console.print(f"{disagree} export(s) disagree with PyTorch beyond the tolerance (see model_card.json)",
                      markup=False, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
