"""`kdrun-eval PATH... --robustness [--out DIR]`: evaluate finished runs' models beyond the clean test split.

With --robustness: accuracy of the teacher, the students from scratch and the distilled students
under Gaussian noise, blur, contrast, brightness and JPEG (severities 1-5, made on the fly from
--seed) and FGSM; writes robustness.csv/.md/.png to PATH/robustness (one path) or --out.
Exit status: 0 done; 2 a bad argument or run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdrun.console import console, results
from kdrun.errors import KdrunError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kdrun-eval", description=__doc__.split("\n\n")[1])
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run or sweep directories")
    parser.add_argument("--robustness", action="store_true", help="corruptions and FGSM (the only evaluation "
                                                                  "so far, so required)")
    parser.add_argument("--out", type=Path, help="output folder (default PATH/robustness, for one PATH)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kdrun.deploy.robustness_report import ROBUSTNESS, write_robustness
    from kdrun.report.aggregate import study
    from kdrun.report.jobs import find_jobs

    try:
        if not args.robustness:
            raise KdrunError("say what to evaluate: --robustness (corruptions and FGSM)")
        if args.out is None and len(args.paths) > 1:
            raise KdrunError(f"{len(args.paths)} paths given: say where the table goes with --out DIR")
        if args.seed < 0:
            raise KdrunError(f"--seed must be >= 0, got {args.seed}")
        out = args.out or args.paths[0] / ROBUSTNESS
        table, png = write_robustness(study(find_jobs(args.paths)), out, args.seed)
    except KdrunError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    results.print(table.rich())
    for note in table.notes:
        results.print(note, markup=False, highlight=False)
    results.print(f"{out / 'robustness.md'}\n{png}", markup=False, highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
