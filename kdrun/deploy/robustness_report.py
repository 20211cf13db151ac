"""Robustness of the teacher(s), the students from scratch and the distilled students of a study."""

from __future__ import annotations

from pathlib import Path

from kdrun.deploy.robustness import Robustness, evaluate, mean_of, plot_robustness, robustness_table
from kdrun.deploy.student import check_serves, load_run, model_from_checkpoint, raw_image_model
from kdrun.errors import KdrunError
from kdrun.io import atomic_write_text
from kdrun.report.aggregate import Study, swept_keys
from kdrun.report.tables import Table

ROBUSTNESS = "robustness"


def robustness_results(s: Study, seed: int = 0) -> list[Robustness]:
    """Each teacher and each seed group, averaged over its seeds; the test split of the runs' dataset."""
    if not s.groups:
        raise KdrunError("no completed run to evaluate")
    datasets = {g.dataset for g in s.groups}
    if len(datasets) > 1:
        raise KdrunError(f"the runs use several datasets ({', '.join(sorted(datasets))}); "
                         "evaluate the robustness of one dataset's runs at a time")
    first = load_run(s.groups[0].jobs[0].path)
    data = first.load_data()

    def raw(path):
        model = model_from_checkpoint(path)
        check_serves(model, data, path)
        return raw_image_model(model, data)

    results = []
    for ref in s.teachers:
        paths = [ref.job.resolve(p) for p in ref.paths if "," not in p]  # an ensemble is not one model
        if paths:
            results.append(mean_of(f"{ref.arch} teacher", [
                evaluate(ref.arch, raw(p), data.test_x, data.test_y, seed) for p in paths]))
    keys = [k for k in swept_keys(s.groups) if k != "strategy.name"]
    for group in s.groups:
        shown = [k for k in keys if group.setting.get(k) is not None]  # scratch has no T
        name = f"{group.arch} {group.strategy} {s.label(group, shown)}".strip()
        runs = [load_run(job.path) for job in group.jobs]
        results.append(mean_of(name, [evaluate(name, run.raw_model(data), data.test_x, data.test_y, seed)
                                      for run in runs]))
    return results


def write_robustness(s: Study, out_dir: Path, seed: int = 0) -> tuple[Table, Path]:
    """robustness.csv/.md/.png (+ .svg) in out_dir; returns the table and the plot's path."""
    results = robustness_results(s, seed)
    table = robustness_table(results)
    png = plot_robustness(Path(out_dir) / f"{ROBUSTNESS}.png", results)
    atomic_write_text(Path(out_dir) / f"{ROBUSTNESS}.csv", table.csv())
    atomic_write_text(Path(out_dir) / f"{ROBUSTNESS}.md", table.markdown(png.name))
    return table, png
