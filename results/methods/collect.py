"""The methods table (results/methods/README.md) from run.sh's runs: per method the student's last-epoch test
accuracy over seeds, its difference from the student trained from scratch with Welch's p, and the seconds an
epoch took relative to kd (what a user pays for the method): its fastest epoch over all seeds, the one least
slowed by other work on a shared machine (as timeit takes the minimum). Every preset in conf/loss gets a row: one whose
jobs failed shows the error they left, one that never ran says so."""

import json
import statistics
import sys
from pathlib import Path

from kdrun.report.significance import welch

REPO = Path(__file__).resolve().parents[2]

# The paper each preset follows (its conf/loss/<name>.yaml and term file name the reference code).
REFERENCES = {
    "kd": "KD, Hinton et al. 2015",
    "dkd": "DKD, Zhao et al. CVPR 2022",
    "dist": "DIST, Huang et al. NeurIPS 2022",
    "mlkd": "MLKD, Jin et al. CVPR 2023",
    "ctkd": "CTKD, Li et al. AAAI 2023",
    "nkd": "NKD, Yang et al. ICCV 2023",
    "wttm": "WTTM, Zheng & Yang ICLR 2024",
    "lskd": "KD + logit standardisation, Sun et al. CVPR 2024",
    "fitnets": "FitNets, Romero et al. ICLR 2015",
    "at": "AT, Zagoruyko & Komodakis ICLR 2017",
    "sp": "SP, Tung & Mori ICCV 2019",
    "cc": "CC, Peng et al. ICCV 2019",
    "vid": "VID, Ahn et al. CVPR 2019",
    "rkd": "RKD, Park et al. CVPR 2019",
    "pkt": "PKT, Passalis & Tefas ECCV 2018",
    "nst": "NST, Huang & Wang 2017",
    "fsp": "FSP, Yim et al. CVPR 2017",
    "ab": "AB, Heo et al. AAAI 2019",
    "ft": "FT, Kim et al. NeurIPS 2018",
    "crd": "CRD, Tian et al. ICLR 2020",
    "kdsvd": "KD-SVD, Lee et al. ECCV 2018",
    "ofd": "OFD, Heo et al. ICCV 2019",
    "reviewkd": "ReviewKD, Chen et al. CVPR 2021",
}


def jobs(sweep: Path) -> tuple[list[dict], list[str]]:
    """The completed jobs' accuracy and fastest epoch's seconds, and the failed jobs' errors."""
    done, errors = [], []
    if not sweep.is_dir():
        return done, errors
    for job in sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        metrics = json.loads((job / "metrics.json").read_text())
        if metrics.get("status") == "completed":
            epochs = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
            done.append({"acc": metrics["final_test_acc"], "epoch_s": min(e["seconds"] for e in epochs)})
        else:
            status = metrics.get("status", "failed")
            errors.append(f"job {job.name}{'' if status == 'failed' else ' ' + status}: "
                          f"{metrics.get('error', 'no error recorded')}")
    return done, errors


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def spread(accs: list[float]) -> str:
    std = f"{statistics.stdev(accs):.2f}" if len(accs) > 1 else "n/a"
    return f"{statistics.fmean(accs):.2f} ± {std}"


def main(out: Path) -> None:
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())["final_test_acc"]
    scratch, _ = jobs(out / "scratch")
    kd, _ = jobs(out / "kd")
    scratch_accs = [r["acc"] for r in scratch]
    kd_time = min(r["epoch_s"] for r in kd)
    presets = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml") if p.stem != "ce")
    print("| loss= | method, paper | test acc % (mean ± std) | n | Δ vs scratch (Welch p) | fastest epoch vs kd's |")
    print("|---|---|---|---|---|---|")
    print(f"| (teacher) | resnet20 on all 60,000 training images, 3 epochs | {teacher:.2f} | 1 | | |")
    scratch_time = min(r["epoch_s"] for r in scratch) / kd_time
    print(f"| (scratch) | resnet8 from scratch, labels only | {spread(scratch_accs)} | {len(scratch_accs)} | | "
          f"{scratch_time:.2f}x |")
    measured, failed = [], []
    for name in presets:
        done, errors = jobs(out / name)
        paper = REFERENCES.get(name, "")
        if not done:
            why = f"failed: {cell(errors[0])}" if errors else "not run"
            failed.append(f"| {name} | {paper} | {why} | 0 | | |")
            continue
        accs = [r["acc"] for r in done]
        time = min(r["epoch_s"] for r in done) / kd_time
        n = f"{len(accs)}" + (f" ({len(errors)} failed: {cell(errors[0])})" if errors else "")
        measured.append((statistics.fmean(accs), f"| {name} | {paper} | {spread(accs)} | {n} | "
                                                 f"{welch(accs, scratch_accs).text()} | {time:.2f}x |"))
    for _, line in sorted(measured, reverse=True):
        print(line)
    for line in failed:
        print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
