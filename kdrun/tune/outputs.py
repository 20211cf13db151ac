"""What a study leaves in its sweep folder: study.csv/.md (every trial), best.yaml (runnable with
`kdrun --config-path <sweep> --config-name best`; pareto_<job>.yaml per Pareto-optimal trial of a
multi-objective study), and Optuna's own matplotlib plots (history, importance, slice; Pareto front)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import optuna
import yaml
from matplotlib import pyplot
from omegaconf import OmegaConf
from optuna.visualization import matplotlib as optuna_plots

from kdrun.io import atomic_write_text
from kdrun.report.plots import save_png
from kdrun.report.tables import markdown_table, to_csv

matplotlib.use("Agg")

JOB = "job"  # a trial's user attribute: the number of its job folder
FAILED = "failed"  # a trial's user attribute: its job ran and failed (an interrupted trial has no such mark)


def trial_rows(study: optuna.Study, names: list[str]) -> tuple[list[str], list[dict]]:
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    columns = ["trial", "job", "state", *names, *params, "seconds"]
    rows = []
    for t in trials:
        values = dict(zip(names, t.values)) if t.values else {}
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"trial": t.number, "job": t.user_attrs.get(JOB), "state": state_name(t),
                     **{n: _round(values.get(n)) for n in names}, **{p: _round(t.params.get(p)) for p in params},
                     "seconds": _round(seconds)})
    return columns, rows


def state_name(trial: optuna.trial.FrozenTrial) -> str:
    """complete, failed, or interrupted (a sweep killed while it ran; retried as a later trial)."""
    if trial.state == optuna.trial.TrialState.FAIL:
        return "failed" if trial.user_attrs.get(FAILED) else "interrupted"
    return trial.state.name.lower()


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial (one objective) or the Pareto-optimal ones (several); [] before any completes."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    return [study.best_trial] if len(study.directions) == 1 else sorted(study.best_trials, key=lambda t: t.number)


def runnable_config(job_dir: Path) -> str:
    """A primary config that composes kdrun's config with the job's group choices and values: the job again,
    as `kdrun --config-path <dir> --config-name <name>` runs it (in a new run folder)."""
    hydra_cfg = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    choices = {group: option for group, option in hydra_cfg.runtime.choices.items()
               if not group.startswith("hydra") and "/" not in group and option is not None}
    values = OmegaConf.create()
    for override in overrides:
        key, _, value = str(override).lstrip("+").partition("=")
        if key.startswith(("~", "hydra.")) or key in choices or "/" in key:
            continue
        OmegaConf.update(values, key, yaml.safe_load(value), force_add=True)
    document = {"defaults": ["config", *({f"override {g}": o} for g, o in choices.items()), "_self_"],
                **OmegaConf.to_container(values),
                "hydra": {"searchpath": ["pkg://kdrun.conf"]}}
    return yaml.safe_dump(document, sort_keys=False)


def write_best_configs(study: optuna.Study, sweep_dir: Path) -> list[Path]:
    written = []
    best = best_trials(study)
    for trial in best:
        name = "best.yaml" if len(best) == 1 and len(study.directions) == 1 else f"pareto_{trial.user_attrs[JOB]}.yaml"
        values = ", ".join(f"{v:.4g}" for v in trial.values)
        header = (f"# trial {trial.number} of study {study.study_name} (job folder {trial.user_attrs[JOB]}): "
                  f"objective {values}\n# run it again: kdrun --config-path {sweep_dir.absolute()} "
                  f"--config-name {Path(name).stem}\n")
        atomic_write_text(sweep_dir / name, header + runnable_config(sweep_dir / str(trial.user_attrs[JOB])))
        written.append(sweep_dir / name)
    return written


def write_plots(study: optuna.Study, names: list[str], sweep_dir: Path) -> tuple[list[Path], list[str]]:
    """Optuna's plots, each as PNG + SVG; a plot Optuna cannot draw (too few trials) is a note instead."""
    plots: dict[str, callable] = {}
    if len(names) == 1:
        plots = {stem: (lambda s, plot=plot: plot(s, target_name=names[0])) for stem, plot in (
            ("optimization_history", optuna_plots.plot_optimization_history),
            ("param_importances", optuna_plots.plot_param_importances),
            ("slice", optuna_plots.plot_slice))}
    else:
        plots = {"pareto_front": lambda s: optuna_plots.plot_pareto_front(s, target_names=names)}
        plots.update({f"optimization_history_{n}": (lambda s, i=i, n=n: optuna_plots.plot_optimization_history(
            s, target=lambda t: t.values[i], target_name=n)) for i, n in enumerate(names)})
    written, notes = [], []
    for stem, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes.append(f"{stem}: not drawn ({exc})")
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        written.append(save_png(figure, sweep_dir / f"{stem}.png"))
        pyplot.close(figure)
    return written, notes


def study_markdown(study: optuna.Study, names: list[str], storage: str, columns: list[str], rows: list[dict],
                   notes: list[str], confirmation: str) -> str:
    best = best_trials(study)
    lines = [f"# Optuna study {study.study_name}", "",
             f"Objective: {', '.join(f'{n} ({d.name.lower()})' for n, d in zip(names, study.directions))}; "
             f"accuracies on the validation split. Storage: `{storage}`.", ""]
    if best and len(names) == 1:
        lines += [f"Best: trial {best[0].number} (job {best[0].user_attrs.get(JOB)}), {names[0]} = "
                  f"{best[0].value:.4g}, with " + ", ".join(f"{k}={_round(v)}" for k, v in best[0].params.items())
                  + ". Its config: best.yaml.", ""]
    elif best:
        front = {t.number for t in best}
        lines += ["## Pareto front", "", "The trials no other trial beats on every objective (pareto_front.png; "
                  "each one's config: pareto_<job>.yaml).", "",
                  markdown_table(columns, [[row[c] for c in columns] for row in rows if row["trial"] in front]), ""]
    lines += ["## Trials", "", markdown_table(columns, [[row[c] for c in columns] for row in rows]), ""]
    if confirmation:
        lines += [confirmation, ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def write_study_files(study: optuna.Study, names: list[str], sweep_dir: Path, storage: str,
                      confirmation: str = "") -> list[Path]:
    columns, rows = trial_rows(study, names)
    atomic_write_text(sweep_dir / "study.csv", to_csv(columns, rows))
    configs = write_best_configs(study, sweep_dir)
    plots, notes = write_plots(study, names, sweep_dir)
    atomic_write_text(sweep_dir / "study.md", study_markdown(study, names, storage, columns, rows, notes,
                                                             confirmation))
    return [sweep_dir / "study.md", sweep_dir / "study.csv", *configs, *plots]
