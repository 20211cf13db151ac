"""Pictures, drawn with matplotlib's Agg canvas: no display, no pyplot global state.

- learning_curves.png in each run directory: the loss terms and the accuracies per epoch.
- sweep plots: accuracy (mean ± std over seeds) against a swept scalar, with the
  teacher and the from-scratch student as reference lines.
- heatmaps for two swept scalars.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from kdrun.io import atomic_open
from kdrun.report.aggregate import Stat

LEARNING_CURVES = "learning_curves.png"
DPI = 110


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Render with Agg and write atomically (a temporary sibling, then a rename); the same figure also
    as <name>.svg beside it, a vector file for papers. Returns the PNG's path."""
    FigureCanvasAgg(fig)
    if fig.get_layout_engine() is not None:
        # Lay the figure out once and keep it: each savefig would run the (slow) layout again.
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    with atomic_open(Path(path).with_suffix(".svg"), "wb") as f:
        fig.savefig(f, format="svg")
    return Path(path)


TRAIN_ACC_NOTE = ("train accuracy: on augmented batches while the weights change during the epoch, "
                  "so it can sit under test accuracy")


def run_title(strategy: str, arch: str, dataset: str, seed, T=None) -> str:
    """What a run is, for a figure: its seed and temperature, not its folder's name."""
    return f"{strategy}: {arch} on {dataset} (seed {seed}" + (f", T={T:g})" if T is not None else ")")


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
    values = [e.get(k) for e in epochs for k in loss_keys if isinstance(e.get(k), (int, float))]
    if values and all(v > 0 and math.isfinite(v) for v in values):
        # Terms differ by orders of magnitude (CE 0.03 beside KD 13): on a linear axis the small ones are flat.
        loss_ax.set_yscale("log")
        # Plain tick labels (0.1, 2): the default's mathtext ($10^{-1}$) took a third of the figure's time.
        loss_ax.yaxis.set_major_formatter(LogFormatter())
        loss_ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        loss_ax.set_ylabel("loss (log scale)")

    acc_keys = sorted({k for e in epochs for k in e if k.endswith("_acc")}, key=lambda k: (k != "train_acc", k))
    for key in acc_keys:
        acc_ax.plot(x, [e.get(key, float("nan")) for e in epochs], marker=marker, markersize=3,
                    label="train (augmented)" if key == "train_acc" else key.removesuffix("_acc").replace("_", " "))
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy %")

    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if "train_acc" in acc_keys:
        acc_ax.annotate(TRAIN_ACC_NOTE, xy=(0.5, -0.22), xycoords="axes fraction", ha="center", va="top",
                        fontsize="x-small", wrap=True)
    fig.suptitle(title or run_dir.name, fontsize="medium")
    return save_png(fig, run_dir / LEARNING_CURVES)


@dataclass
class Series:
    """One line of a sweep plot: a stat per x."""

    label: str
    xs: list[float]
    acc: list[Stat]  # final test accuracy
    best: list[Stat]  # best-epoch test accuracy


@dataclass
class Reference:
    label: str
    stat: Stat
    kind: str  # "teacher" or "scratch"


def reference_text(s: Stat) -> str:
    """A reference's accuracy: one model is a number, several a mean ± std."""
    return f"{s.mean:.2f}% (n=1)" if s.n == 1 else f"{s.text()}% (n={s.n})"


def _n_text(stats: list[Stat]) -> str:
    ns = sorted({s.n for s in stats})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def _scale_x(ax, xs: list[float]) -> None:
    """Log2 axis for values that span a factor of 8 or more (temperatures 1..16), ticks at the values."""
    values = sorted(set(xs))
    if values and values[0] > 0 and values[-1] / values[0] >= 8:
        ax.set_xscale("log", base=2)
    if len(values) <= 12:
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()


def plot_sweep(path: str | os.PathLike, x_label: str, series: list[Series], references: list[Reference],
               title: str) -> Path:
    """Test accuracy (mean ± std over seeds) against a swept scalar, with the references as lines."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, s in enumerate(series):
        color = f"C{i}"
        std = [0.0 if math.isnan(a.std) else a.std for a in s.acc]
        ax.errorbar(s.xs, [a.mean for a in s.acc], yerr=std, marker="o", capsize=3, color=color,
                    label=f"{s.label}: test acc, mean ± std ({_n_text(s.acc)})")
        ax.plot(s.xs, [b.mean for b in s.best], linestyle=":", marker=".", color=color, alpha=0.6,
                label="dotted: best-epoch acc (mean)" if i == 0 else None)
    for ref in references:
        mean, std = ref.stat.mean, ref.stat.std
        text = f"{ref.label}: {reference_text(ref.stat)}"
        if ref.kind == "teacher":
            ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=text)
        else:
            ax.axhline(mean, color="dimgray", linestyle="-.", linewidth=1.2, label=text)
            if not math.isnan(std):
                ax.axhspan(mean - std, mean + std, color="gray", alpha=0.15, linewidth=0)
    _scale_x(ax, [x for s in series for x in s.xs])
    ax.set(title=title, xlabel=x_label, ylabel="test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_heatmap(path: str | os.PathLike, x_label: str, y_label: str, xs: list, ys: list,
                 cells: dict[tuple, Stat], title: str, footnote: str = "") -> Path:
    """Mean test accuracy per (x, y), each cell annotated with mean ± std and n."""
    data = np.full((len(ys), len(xs)), np.nan)
    for (x, y), s in cells.items():
        data[ys.index(y), xs.index(x)] = s.mean
    fig = Figure(figsize=(1.6 + 1.25 * len(xs), 1.6 + 0.8 * len(ys)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(data, cmap="viridis", origin="lower", aspect="auto")
    finite = data[np.isfinite(data)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (x, y), s in cells.items():
        std = "n/a" if math.isnan(s.std) else f"{s.std:.1f}"
        ax.text(xs.index(x), ys.index(y), f"{s.mean:.1f}\n±{std} (n={s.n})", ha="center", va="center",
                fontsize="x-small", color="black" if s.mean > middle else "white")
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    fig.colorbar(image, ax=ax, label="test accuracy % (mean)")
    if footnote:
        fig.supxlabel(footnote, fontsize="small")
    return save_png(fig, path)
