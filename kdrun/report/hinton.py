"""The Hinton et al. (2015) MNIST table: test errors (misclassified test images), mean ± std over seeds,
beside the paper's figures. `python -m kdrun.report.hinton <runs folder> --out results/hinton`
(what `make reproduce-hinton` calls) reads every run's config.yaml and metrics.json below the folder."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from kdrun.errors import KdrunError
from kdrun.io import atomic_open, atomic_write_text
from kdrun.report.plots import save_png
from kdrun.report.tables import markdown_table, run_table_command, to_csv

# Hinton, Vinyals & Dean (2015), section 3, MNIST (10,000 test images); the 30-unit student has no
# published count, only "temperatures in the range 2.5 to 4 worked significantly better".
PAPER_ERRORS = {("teacher", 1200): 67, ("scratch", 800): 146, ("kd", 800): 74}
# digits: scikit-learn's 1,797 images, 20% held out as the test split (kdrun/sources/data/datasets.py)
TEST_IMAGES = {"mnist": 10_000, "fashion_mnist": 10_000, "digits": 360}


def test_images(dataset_cfg) -> int:
    """How many test images a run was scored on: its dataset's test split, cut to dataset.limit_test if set."""
    size, limit = TEST_IMAGES.get(dataset_cfg.name), dataset_cfg.get("limit_test")
    if size is None and not limit:
        raise KdrunError(f"dataset {dataset_cfg.name!r}: test split size unknown to this table (known: "
                         f"{', '.join(TEST_IMAGES)}); run with dataset.limit_test set")
    return min(v for v in (size, limit) if v)


def errors_from_accuracy(final_test_acc: float, test_images: int) -> int:
    """Accuracy (%) over `test_images` back to the count of misclassified images."""
    return round((100.0 - final_test_acc) * test_images / 100.0)


def read_runs(root: Path) -> list[dict]:
    """One record per finished run below `root`: role, width, T, seed, errors, test images."""
    runs = []
    for metrics_path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        config_path = metrics_path.parent / "config.yaml"
        if metrics.get("status") != "completed" or not config_path.is_file():
            continue
        cfg = OmegaConf.load(config_path)
        n = test_images(cfg.dataset)
        is_teacher = cfg.name.startswith("hinton_teacher")
        runs.append({
            "role": "teacher" if is_teacher else cfg.strategy.name,
            "width": int(cfg.student.hidden[0]),
            "T": None if is_teacher or cfg.strategy.name == "scratch" else float(metrics["T"]),
            "seed": int(cfg.seed), "errors": errors_from_accuracy(metrics["final_test_acc"], n), "test_images": n,
            "dataset": cfg.dataset.name, "wall_time_s": float(metrics.get("wall_time_s", float("nan"))),
            "val_acc": metrics.get("final_val_acc"),
            "train_images": metrics.get("labelled_images", 0) + metrics.get("unlabelled_images", 0),
        })
    return runs


def _mean_or_none(values: list) -> float | None:
    """The mean, rounded, where every run recorded the value (a validation split), else None."""
    return None if any(v is None for v in values) else round(statistics.fmean(values), 2)


def group_rows(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["role"], run["width"], run["T"]), []).append(run)
    order = {"teacher": 0, "scratch": 1, "kd": 2}
    rows = []
    for (role, width, T), members in sorted(groups.items(), key=lambda kv: (-kv[0][1], order.get(kv[0][0], 3),
                                                                             kv[0][2] or 0)):
        errors = [m["errors"] for m in members]
        paper = PAPER_ERRORS.get((role, width)) if T in (None, 20.0) else None
        rows.append({
            "model": f"{width}-{width}", "trained as": role if T is None else f"kd T={T:g}",
            "test errors (mean)": round(statistics.mean(errors), 1),
            "std": round(statistics.stdev(errors), 1) if len(errors) > 1 else None,
            "seeds": len(errors), "per seed": " ".join(map(str, errors)),
            "val acc % (mean)": _mean_or_none([m["val_acc"] for m in members]),
            "train images": members[0]["train_images"], "test images": members[0]["test_images"],
            "wall s/run": round(statistics.fmean(m["wall_time_s"] for m in members), 1), "paper (MNIST)": paper,
        })
    return rows


def plot_width30(rows: list[dict], out: Path) -> list[Path]:
    """Errors of the 30-unit student against T, with its from-scratch errors as a line."""
    kd = [r for r in rows if r["model"] == "30-30" and r["trained as"].startswith("kd")]
    scratch = [r for r in rows if r["model"] == "30-30" and r["trained as"] == "scratch"]
    if not kd:
        return []
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    temps = [float(r["trained as"].split("=")[1]) for r in kd]
    ax.errorbar(temps, [r["test errors (mean)"] for r in kd], yerr=[r["std"] or 0 for r in kd], marker="o",
                capsize=3, label="distilled 30-30")
    for r in scratch:
        ax.axhline(r["test errors (mean)"], color="gray", linestyle="--", label="30-30 from scratch")
    ax.set_xscale("log")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set_xlabel("temperature T")
    ax.set_ylabel(f"test errors (of {kd[0]['test images']})")
    ax.set_title("30-unit student over T (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    paths = [save_png(fig, out / "width30_over_T.png")]
    with atomic_open(out / "width30_over_T.svg", "wb") as f:
        fig.savefig(f, format="svg")
    return [*paths, out / "width30_over_T.svg"]


def write_table(root: Path, out: Path) -> list[Path]:
    runs = read_runs(root)
    if not runs:
        raise SystemExit(f"no finished runs below {root}")
    rows = group_rows(runs)
    columns = list(rows[0])
    out.mkdir(parents=True, exist_ok=True)
    dataset = runs[0]["dataset"]
    atomic_write_text(out / "table.md", f"Test errors on {dataset}, final weights, mean ± std over seeds; "
                      "the paper's figures are on MNIST.\n\n" + markdown_table(columns, [list(r.values()) for r in rows]))
    atomic_write_text(out / "table.csv", to_csv(columns, rows))
    return [out / "table.md", out / "table.csv", *plot_width30(rows, out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdrun.report.hinton", description=__doc__)
    parser.add_argument("runs", type=Path, help="the folder make reproduce-hinton ran into")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return run_table_command(lambda: write_table(args.runs, args.out), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
