"""The precision table (results/precision/README.md) from run.sh's runs: per strategy the student's last-epoch
test accuracy in fp32 and in bf16 over seeds, the difference with Welch's p, and what each run cost: its wall
time and its training speed (images/s over epochs 2 and on), with the fp32/bf16 ratio of each back-to-back pair."""

import json
import re
import statistics
import sys
from pathlib import Path

from kdrun.report.significance import welch

RUN = re.compile(r"(?P<strategy>\w+)_(?P<precision>fp32|bf16)_seed(?P<seed>\d+)$")


def runs(out: Path) -> dict[tuple[str, str, int], dict]:
    found = {}
    for job in sorted(out.iterdir()):
        match = RUN.match(job.name)
        if not match or not (job / "metrics.json").is_file():
            continue
        metrics = json.loads((job / "metrics.json").read_text())
        if metrics.get("status") != "completed":
            continue
        epochs = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        load = [float(line.split("load average:")[1].split(",")[0]) for line in
                (out / f"{job.name}.load").read_text().splitlines()]
        assert metrics["precision"] == match["precision"], job  # the run says what it computed in
        found[(match["strategy"], match["precision"], int(match["seed"]))] = {
            "acc": metrics["final_test_acc"], "wall_s": metrics["wall_time_s"], "load": load,
            "img_s": statistics.median(e["images_per_s"] for e in epochs[1:])}
    return found


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main(out: Path) -> None:
    found = runs(out)
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())["final_test_acc"]
    print(f"teacher resnet20 (fp32, 6,000 images, 4 epochs): {teacher:.2f}% on the whole test split\n")
    print("| student | fp32 acc % | bf16 acc % | n | bf16 - fp32 (Welch p) | wall s fp32 / bf16 "
          "| img/s fp32 / bf16 | speed ratio per pair |")
    print("|---|---|---|---|---|---|---|---|")
    for strategy in dict.fromkeys(k[0] for k in found):
        seeds = sorted({k[2] for k in found if k[0] == strategy and (strategy, "fp32", k[2]) in found
                        and (strategy, "bf16", k[2]) in found})
        if not seeds:
            continue
        fp32 = [found[(strategy, "fp32", s)] for s in seeds]
        bf16 = [found[(strategy, "bf16", s)] for s in seeds]
        diff = welch([r["acc"] for r in bf16], [r["acc"] for r in fp32])
        ratios = [b["img_s"] / a["img_s"] for a, b in zip(fp32, bf16)]
        print(f"| resnet8 {strategy} | {mean_std([r['acc'] for r in fp32])} | {mean_std([r['acc'] for r in bf16])} "
              f"| {len(seeds)} | {diff.text()} "
              f"| {statistics.median(r['wall_s'] for r in fp32):.0f} / {statistics.median(r['wall_s'] for r in bf16):.0f} "
              f"| {statistics.median(r['img_s'] for r in fp32):.0f} / {statistics.median(r['img_s'] for r in bf16):.0f} "
              f"| {' '.join(f'{r:.2f}x' for r in ratios)} |")
    loads = [x for r in found.values() for x in r["load"]]
    print(f"\nseeds: {', '.join(str(s) for s in sorted({k[2] for k in found}))}; load average (1 min) at the runs' "
          f"starts and ends: {min(loads):.1f} to {max(loads):.1f} on 2 cores; one torch thread per run.")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
