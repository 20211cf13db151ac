"""The methods table (results/methods/README.md) from run.sh's runs: per method the student's last-epoch test
accuracy over seeds, its difference from the student trained from scratch with Welch's p, and the seconds an
epoch took relative to kd (what a user pays for the method)."""

import json
import statistics
import sys
from pathlib import Path

from kdrun.report.significance import welch


def runs(sweep: Path) -> list[dict]:
    found = []
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        metrics = json.loads((job / "metrics.json").read_text())
        if metrics.get("status") == "completed":
            epochs = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
            found.append({"acc": metrics["final_test_acc"], "epoch_s": statistics.fmean(e["seconds"] for e in epochs)})
    return found


def main(out: Path) -> None:
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())["final_test_acc"]
    sweeps = {p.name: runs(p) for p in sorted(out.iterdir()) if (p / "multirun.yaml").is_file()}
    scratch = [r["acc"] for r in sweeps.pop("scratch")]
    kd_time = statistics.fmean(r["epoch_s"] for r in sweeps["kd"])
    print(f"teacher resnet20 (60,000 images, 3 epochs): {teacher:.2f}%; student resnet8 from scratch (3,000 images, "
          f"4 epochs): {statistics.fmean(scratch):.2f} ± {statistics.stdev(scratch):.2f} (n={len(scratch)})\n")
    print("| loss= | test acc % (mean ± std) | n | Δ vs scratch (Welch p) | s/epoch vs kd |")
    print("|---|---|---|---|---|")
    rows = []
    for name, found in sweeps.items():
        accs = [r["acc"] for r in found]
        if not accs:
            rows.append((-1.0, f"| {name} | failed | 0 | | |"))
            continue
        std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        time = statistics.fmean(r["epoch_s"] for r in found) / kd_time
        rows.append((statistics.fmean(accs), f"| {name} | {statistics.fmean(accs):.2f} ± {std:.2f} | {len(accs)} | "
                                             f"{welch(accs, scratch).text()} | {time:.2f}x |"))
    for _, line in sorted(rows, reverse=True):
        print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
