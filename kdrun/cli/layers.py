"""`kdrun-layers`: a model's layer names and output shapes, to pick feature-term layers by name.

    kdrun-layers student=torchvision student.arch=mobilenet_v3_small dataset=digits
    kdrun-layers teacher=torchvision teacher.arch=resnet18 student=resnet20 --all

Takes the same overrides as `kdrun`; lists the student's layers, and the teacher's when the strategy
has one, for the dataset's input shape. By default: the model's top-level layers and its stages (the
default feature-term layers, marked) with their shapes; `--all`: every layer that runs, the full tree.
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from kdrun.console import console, results
from kdrun.errors import KdrunError
from kdrun.sources.model_sources import arch_of
from kdrun.sources.models import build_model
from kdrun.sources.models.external import ExternalModel
from kdrun.sources.models.layers import LayerTap, feature_root


ALL_FLAG = "--all"


def layer_table(arch: str, dims: tuple[int, int, int], full: bool = False) -> list[tuple[str, str, str, str]]:
    """(name, module type, output shape for one sample, stage mark): the top-level layers and the stages,
    or with `full` every layer that runs."""
    model = build_model(arch, *dims).eval()
    root = feature_root(model)
    names = [n for n, _ in root.named_modules() if n]
    with torch.no_grad(), LayerTap(root, names) as tap:
        features, _ = model.forward_features(torch.zeros(1, dims[0], dims[1], dims[1]))
        captured = tap.captured()
    stages = list(model.stage_layers) if isinstance(model, ExternalModel) else []
    modules = dict(root.named_modules())
    rows = []
    for name in names:
        if name not in captured or not (full or "." not in name or name in stages):
            continue
        out = captured[name]
        shape = "x".join(map(str, out.shape[1:])) if isinstance(out, torch.Tensor) else type(out).__name__
        mark = f"stage {stages.index(name)}" if name in stages else ""
        rows.append((name, type(modules[name]).__name__, shape, mark))
    if not stages:  # zoo models compute their stages in forward_features: one row each, by shape
        rows += [(f"(stage {i})", "forward_features", "x".join(map(str, f.shape[1:])), f"stage {i}")
                 for i, f in enumerate(features)]
    return rows


def print_layers(role: str, arch: str, dims: tuple[int, int, int], full: bool) -> None:
    which = "every layer" if full else f"top-level layers and stages ({ALL_FLAG}: every layer)"
    title = Text(f"{role} {arch}: {which} for {dims[0]}x{dims[1]}x{dims[1]} inputs, {dims[2]} classes", style="bold")
    table = Table()
    for column in ("layer", "type", "output (CxHxW)", "stage"):
        table.add_column(column, overflow="fold")
    for row in layer_table(arch, dims, full):
        table.add_row(*map(escape, row))
    results.print(Group(title, table))  # the title wraps at the console's width, not the table's


@hydra.main(version_base="1.3", config_path="pkg://kdrun.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from kdrun.sources.data import load_dataset

    try:
        data = load_dataset(cfg.dataset, "cpu")
        dims = (data.in_channels, data.image_size, data.num_classes)
        print_layers("student", arch_of(cfg.student), dims, _full_tree)
        if cfg.strategy.name != "scratch":
            print_layers("teacher", arch_of(cfg.teacher), dims, _full_tree)
    except (KdrunError, ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]Error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)


_full_tree = False  # --all, taken off the command line before Hydra reads it


def main() -> None:
    global _full_tree
    _full_tree = ALL_FLAG in sys.argv[1:]
    sys.argv = [a for a in sys.argv if a != ALL_FLAG]
    # Nothing to write: no run directory, no .hydra folder.
    sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                 "hydra/hydra_logging=disabled"]
    _hydra_main()


if __name__ == "__main__":
    main()
