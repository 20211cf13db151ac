"""`kdrun-report PATH...`: one report over any mix of run and sweep directories.

A plain command rather than a Hydra app: the inputs are paths, and Hydra's own
job directories are named like `3_T=4,seed=1`, which its override grammar would
need quoted; positional paths also take shell globs (`outputs/sweeps/2026-*`).
The output follows Hydra's layout: outputs/reports/<date>/<time>/ unless --out.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from kdrun.console import console
from kdrun.errors import KdrunError
from kdrun.report.build import write_report
from kdrun.report.jobs import find_jobs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kdrun-report",
        description="Rebuild kdrun's tables and plots (comparison with size and latency, seed groups, "
                    "temperature and other sweeps) from run and sweep directories, in one report.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a run directory, a sweep directory, or any folder above them (searched)")
    parser.add_argument("-o", "--out", type=Path,
                        help="where to write the report (default: outputs/reports/<date>/<time>)")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip measuring latency at batch 1 (it loads each group's checkpoint)")
    parser.add_argument("--deploy", action="store_true",
                        help="export each model (ONNX fp32 and int8) and add FLOPs, file sizes, int8 accuracy, "
                             "PyTorch/onnxruntime latency and images/s (needs kdrun[deploy])")
    parser.add_argument("--robustness", action="store_true",
                        help="accuracy under corruptions (5 kinds x 5 severities) and FGSM, per model, and a plot")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        jobs = find_jobs(args.paths)
    except KdrunError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    out = args.out or Path("outputs") / "reports" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    console.print(f"{len(jobs)} job(s) from {', '.join(map(str, args.paths))}", markup=False, highlight=False)
    write_report(jobs, out, title=f"kdrun report: {len(jobs)} jobs", measure_latency=not args.no_latency,
                 deploy=args.deploy, robustness=args.robustness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
