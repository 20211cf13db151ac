"""The whole of an Optuna sweep: the study, its files, then the best setting re-run on new seeds beside the
student from scratch (the honest test number for a setting chosen on validation)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from rich.markup import escape
from sqlalchemy.engine import make_url

from kdrun.console import console
from kdrun.report.build import write_report
from kdrun.report.jobs import read_sweep
from kdrun.tune.outputs import best_trials, write_study_files
from kdrun.tune.study import JOB, StudyRunner, StudySettings, storage_url

CONFIRM_DIR = "confirm"
# Keys that only a distilled student reads: its from-scratch twin leaves them out.
DISTILLATION_KEYS = ("T", "loss", "teacher", "strategy", "dkd_beta")


def run_sweep(options: dict, config: DictConfig, launcher, arguments: list[str]) -> None:
    settings = StudySettings(n_trials=options["n_trials"], n_jobs=options["n_jobs"], storage=options["storage"],
                             study_name=options["study_name"], sampler=options["sampler"])
    runner = StudyRunner(settings, config, launcher, arguments)
    study = runner.run()
    best = best_trials(study)
    confirmation = ""
    if best and len(runner.names) == 1 and options["confirm_seeds"] > 0:
        confirmation = confirm(runner, best[0].params, best[0].user_attrs[JOB], options["confirm_seeds"],
                               config.seed)
    storage = make_url(storage_url(settings, runner.sweep_dir)).render_as_string(hide_password=True)
    files = write_study_files(study, runner.names, runner.sweep_dir, storage, confirmation)
    console.print("study files:\n" + "\n".join(f"  {escape(str(p))}" for p in files), soft_wrap=True)


def is_distillation_key(override: str) -> bool:
    key = override.lstrip("+").split("=", 1)[0]
    return any(key == k or key.startswith(k + ".") for k in DISTILLATION_KEYS)


def confirm(runner: StudyRunner, params: dict, best_job: int, n_seeds: int, tuned_seed: int) -> str:
    """Re-run the best setting and its from-scratch twin on `n_seeds` seeds the study did not use, in
    <sweep>/confirm/; return the comparison (test accuracy, Δ, Welch's p) as Markdown."""
    seeds = [tuned_seed + 1 + i for i in range(n_seeds)]
    best = [o for o in runner.trial_overrides(params) if not o.lstrip("+").startswith("seed=")]
    scratch = [o for o in best if not is_distillation_key(o)] + ["strategy=scratch"]
    jobs = [[*best, f"seed={s}", f"hydra.sweep.subdir={CONFIRM_DIR}/kd_seed{s}"] for s in seeds] \
        + [[*scratch, f"seed={s}", f"hydra.sweep.subdir={CONFIRM_DIR}/scratch_seed{s}"] for s in seeds]
    console.print(f"the best setting (job {best_job}) on seeds {', '.join(map(str, seeds))}, beside the student "
                  f"from scratch: {len(jobs)} jobs in {escape(str(runner.sweep_dir / CONFIRM_DIR))}", soft_wrap=True)
    runner.launcher.launch(jobs, initial_job_idx=0)
    confirm_dir = runner.sweep_dir / CONFIRM_DIR
    write_report(read_sweep(confirm_dir), confirm_dir, title=f"the best setting of {runner.sweep_dir}, re-run")
    comparison = (confirm_dir / "comparison.md").read_text() if (confirm_dir / "comparison.md").is_file() else ""
    return "\n".join([f"## The best setting on the test split, seeds {', '.join(map(str, seeds))}", "",
                      "Chosen on validation, measured here once on test over new seeds, beside the student from "
                      f"scratch (confirm/: each job, comparison.md, report.md).", "", comparison])
