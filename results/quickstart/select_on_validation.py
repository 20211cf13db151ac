"""Which quick-start setup makes distillation beat training from scratch, judged on VALIDATION accuracy only.

Reads the runs below a folder (made with dataset.val_fraction=0.2: 20% of digits' training split held out,
stratified, fixed seed; the test split untouched by the choice), groups them by student, epochs and T, and prints
each distilled group's validation Δ against the from-scratch student of the same architecture, with Welch's
p over the seeds. Usage: python results/quickstart/select_on_validation.py outputs/quickstart-selection
"""

import json
import statistics
import sys
from pathlib import Path

from omegaconf import OmegaConf

from kdrun.report.significance import welch


def groups(root: Path) -> dict[tuple, list[float]]:
    found: dict[tuple, list[float]] = {}
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics.get("status") != "completed" or "final_val_acc" not in metrics:
            continue
        cfg = OmegaConf.load(path.parent / "config.yaml")
        student = (cfg.student.arch + (f"{list(cfg.student.hidden)}" if cfg.student.get("hidden") else "")
                   + f", {cfg.epochs} ep")
        T = None if cfg.strategy.name == "scratch" else float(cfg.T)
        found.setdefault((student, T), []).append(float(metrics["final_val_acc"]))
    return found


def main(root: str) -> None:
    found = groups(Path(root))
    print(f"{'student':<20} {'trained as':<12} {'val acc % (mean ± std, n)':<28} Δ vs scratch on val")
    for (student, T), accs in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        scratch = found.get((student, None))
        delta = welch(accs, scratch).text() if T is not None and scratch else ""
        spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        print(f"{student:<20} {'scratch' if T is None else f'kd T={T:g}':<12} "
              f"{f'{statistics.fmean(accs):.2f} ± {spread:.2f} ({len(accs)})':<28} {delta}")


if __name__ == "__main__":
    main(sys.argv[1])
