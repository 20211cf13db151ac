"""Accuracy under corruptions and FGSM, per model: a table (CSV, Markdown, console) and a plot.

Answers the seed notes' question: does the distilled student inherit its teacher's robustness?
mCA (mean corruption accuracy) is the mean over the 5 corruptions x 5 severities.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from kdrun.deploy.corruptions import CORRUPTIONS, FGSM_EPSILONS, SEVERITIES, corrupt, fgsm
from kdrun.io import atomic_open
from kdrun.report.plots import save_png
from kdrun.report.tables import Table

BATCH = 512
SHORT = {"gaussian_noise": "noise", "gaussian_blur": "blur", "contrast": "contr.", "brightness": "bright",
         "jpeg": "jpeg"}


@dataclass
class Robustness:
    """One model's accuracies (%), averaged over the runs it stands for (its seeds)."""

    name: str
    clean: float
    corrupted: dict[str, list[float]]  # corruption -> accuracy at severities 1..5
    fgsm: list[float]  # accuracy at each of FGSM_EPSILONS
    n: int = 1

    @property
    def mca(self) -> float:
        return statistics.fmean(a for accs in self.corrupted.values() for a in accs)


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    correct = sum(int((model(x[i:i + BATCH]).argmax(1) == y[i:i + BATCH]).sum()) for i in range(0, len(x), BATCH))
    return 100.0 * correct / len(x)


def _fgsm_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> float:
    adversarial = torch.cat([fgsm(model, x[i:i + BATCH], y[i:i + BATCH], eps) for i in range(0, len(x), BATCH)])
    return _accuracy(model, adversarial, y)


def evaluate(name: str, model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> Robustness:
    """`model` takes raw images (see student.RawImageModel); x uint8 test images."""
    model.eval()
    corrupted = {c: [_accuracy(model, corrupt(x, c, s, seed), y) for s in SEVERITIES] for c in CORRUPTIONS}
    return Robustness(name, _accuracy(model, x, y), corrupted, [_fgsm_accuracy(model, x, y, e) for e in FGSM_EPSILONS])


def mean_of(name: str, results: list[Robustness]) -> Robustness:
    """Several runs (seeds) of one model, averaged per cell."""
    def avg(values):
        return statistics.fmean(values)
    corrupted = {c: [avg(r.corrupted[c][i] for r in results) for i in range(len(SEVERITIES))] for c in CORRUPTIONS}
    fgsm_accs = [avg(r.fgsm[i] for r in results) for i in range(len(FGSM_EPSILONS))]
    return Robustness(name, avg(r.clean for r in results), corrupted, fgsm_accs, n=len(results))


def robustness_table(results: list[Robustness]) -> Table:
    """Console: clean, mCA, each corruption's mean over severities, FGSM at 2/255 (fits 80 columns)."""
    eps_shown = FGSM_EPSILONS.index(2 / 255)
    columns = ["model", "n", "clean", "mCA", *(SHORT[c] for c in CORRUPTIONS), "fgsm2"]
    rows, csv_rows = [], []
    for r in results:
        per = {c: statistics.fmean(r.corrupted[c]) for c in CORRUPTIONS}
        rows.append([r.name, str(r.n), f"{r.clean:.1f}", f"{r.mca:.1f}", *(f"{per[c]:.1f}" for c in CORRUPTIONS),
                     f"{r.fgsm[eps_shown]:.1f}"])
        row = {"model": r.name, "n": r.n, "clean": round(r.clean, 3), "mCA": round(r.mca, 3)}
        row.update({c: round(per[c], 3) for c in CORRUPTIONS})
        row.update({f"{c}_s{s}": round(r.corrupted[c][s - 1], 3) for c in CORRUPTIONS for s in SEVERITIES})
        row.update({f"fgsm_{round(e * 255)}_255": round(a, 3) for e, a in zip(FGSM_EPSILONS, r.fgsm)})
        csv_rows.append(row)
    csv_columns = list(csv_rows[0]) if csv_rows else columns
    notes = ["Accuracy (%) on the test split under corruptions made on the fly (seeded); mCA = mean over "
             f"{len(CORRUPTIONS)} corruptions x {len(SEVERITIES)} severities; each corruption column is its mean "
             "over severities 1-5; fgsm2 = FGSM at eps 2/255. Per severity and every eps: robustness.csv."]
    return Table("robustness", columns, rows, csv_columns, csv_rows, notes)


def plot_robustness(path: Path, results: list[Robustness]) -> Path:
    """One panel per corruption (accuracy against severity 0..5) and one for FGSM (against eps)."""
    fig = Figure(figsize=(13, 6.5))
    axes = fig.subplots(2, 3).flatten()
    for ax, c in zip(axes, CORRUPTIONS):
        for r in results:
            ax.plot(range(len(SEVERITIES) + 1), [r.clean, *r.corrupted[c]], marker="o", label=r.name)
        ax.set(title=c, xlabel="severity", ylabel="test accuracy %")
        ax.grid(alpha=0.3)
    ax = axes[len(CORRUPTIONS)]
    for r in results:
        ax.plot([0, *(round(e * 255) for e in FGSM_EPSILONS)], [r.clean, *r.fgsm], marker="o", label=r.name)
    ax.set(title="FGSM", xlabel="eps x 255", ylabel="test accuracy %")
    ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("accuracy against corruption severity")
    fig.tight_layout()
    save_png(fig, path)
    with atomic_open(path.with_suffix(".svg"), "wb") as f:  # the vector copy
        fig.savefig(f, format="svg")
    return path
