"""Which few-label regime makes distillation beat training from scratch, judged on VALIDATION accuracy only.

Reads the runs below a folder (all made with dataset.val_fraction=0.2: 20% of digits' training split held out,
stratified, fixed seed; the test split plays no part), groups them by labelled fraction, strategy, epochs,
alpha and T, and prints each group's final validation accuracy over its seeds. Each distilled group's Δ is
against the BEST from-scratch group of the same fraction (whichever epoch count scored highest on validation),
with Welch's p. Usage: python results/transfer/select_on_validation.py <folder of sweeps>
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
        student = cfg.student.arch + (f"{list(cfg.student.hidden)}" if cfg.student.get("hidden") else "")
        how = "scratch" if cfg.strategy.name == "scratch" else f"kd a={cfg.loss.terms.ce.weight:g} T={cfg.T:g}"
        key = (float(cfg.dataset.labelled_fraction), student, how, int(cfg.epochs))
        found.setdefault(key, []).append(float(metrics["final_val_acc"]))
    return found


def main(root: str) -> None:
    found = groups(Path(root))
    print(f"{'labelled':<9} {'student':<12} {'trained as':<16} {'epochs':>6}  {'val acc % (mean ± std, n)':<26} "
          "Δ vs best scratch on val")
    for key, accs in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "scratch", kv[0][2:])):
        fraction, student, how, epochs = key
        scratch = [v for k, v in found.items() if k[:2] == (fraction, student) and k[2] == "scratch"]
        best = max(scratch, key=statistics.fmean, default=None)
        delta = welch(accs, best).text() if how != "scratch" and best else ""
        spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        print(f"{fraction:<9g} {student:<12} {how:<16} {epochs:>6}  "
              f"{f'{statistics.fmean(accs):.2f} ± {spread:.2f} ({len(accs)})':<26} {delta}")


if __name__ == "__main__":
    main(sys.argv[1])
