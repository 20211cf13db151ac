"""Pictures, drawn with matplotlib's Agg canvas: no display, no pyplot global state.

- learning_curves.png in each run directory: the loss terms and the accuracies per epoch.
- sweep plots: accuracy (mean ± std over seeds) against a swept scalar, with the
  teacher and the from-scratch student as reference lines.
- heatmaps for two swept scalars.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdrun.io import atomic_open

LEARNING_CURVES = "learning_curves.png"
DPI = 110


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Render with Agg and write atomically (a temporary sibling, then a rename)."""
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return Path(path)


def read_epochs(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash: the rest is still worth a picture
            continue
    return records


def _marker(n_points: int) -> str:
    return "o" if n_points <= 30 else ""


def plot_learning_curves(run_dir: str | os.PathLike, title: str = "") -> Path | None:
    """Write <run_dir>/learning_curves.png from metrics.jsonl; None when there is no epoch yet."""
    run_dir = Path(run_dir)
    epochs = read_epochs(run_dir)
    if not epochs:
        return None
    x = [e["epoch"] for e in epochs]
    marker = _marker(len(x))
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)

    loss_keys = ["loss"] + sorted({k for e in epochs for k in e if k.startswith("loss_")})
    for key in loss_keys:
        label = "total" if key == "loss" else key[5:]
        loss_ax.plot(x, [e.get(key, float("nan")) for e in epochs], marker=marker, markersize=3,
                     linewidth=2.2 if key == "loss" else 1.3, label=label)
    loss_ax.set(title="training loss (weighted terms)", xlabel="epoch", ylabel="loss")

    acc_keys = sorted({k for e in epochs for k in e if k.endswith("_acc")}, key=lambda k: (k != "train_acc", k))
    for key in acc_keys:
        acc_ax.plot(x, [e.get(key, float("nan")) for e in epochs], marker=marker, markersize=3,
                    label=key.removesuffix("_acc").replace("_", " "))
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy %")

    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or run_dir.name, fontsize="medium")
    return save_png(fig, run_dir / LEARNING_CURVES)
