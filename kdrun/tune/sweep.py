"""The whole of an Optuna sweep: the study, its files, then the best setting re-run on new seeds beside the
student from scratch (the honest test number for a setting chosen on validation)."""

from __future__ import annotations

import re

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
    confirmation = confirm(runner, best, options["confirm_seeds"], config.seed) \
        if best and options["confirm_seeds"] > 0 else ""
    storage = make_url(storage_url(settings, runner.sweep_dir)).render_as_string(hide_password=True)
    files = write_study_files(study, runner.names, runner.sweep_dir, storage, confirmation)
    console.print("study files:\n" + "\n".join(f"  {escape(str(p))}" for p in files), soft_wrap=True)


def is_distillation_key(override: str) -> bool:
    key = override.lstrip("+").split("=", 1)[0]
    return any(key == k or key.startswith(k + ".") for k in DISTILLATION_KEYS)


def confirmation_jobs(runner: StudyRunner, best: list, seeds: list[int]) -> dict[str, list[str]]:
    """Folder name -> overrides: each best trial's setting distilled, and its student from scratch (once per
    distinct student), on each seed."""
    jobs: dict[str, list[str]] = {}
    scratch_done: set[tuple] = set()
    for trial in best:
        job = trial.user_attrs[JOB]
        distilled = [o for o in runner.trial_overrides(trial.params) if not o.lstrip("+").startswith("seed=")]
        scratch = [o for o in distilled if not is_distillation_key(o)] + ["strategy=scratch"]
        jobs.update({f"job{job}_kd_seed{s}": [*distilled, f"seed={s}"] for s in seeds})
        if tuple(scratch) not in scratch_done:
            scratch_done.add(tuple(scratch))
            jobs.update({f"job{job}_scratch_seed{s}": [*scratch, f"seed={s}"] for s in seeds})
    return jobs


def confirm(runner: StudyRunner, best: list, n_seeds: int, tuned_seed: int) -> str:
    """Re-run the best setting (each Pareto-optimal one, with several objectives) and its student from scratch
    on `n_seeds` seeds the study did not use, in <sweep>/confirm/; return the comparison (test accuracy, Δ,
    Welch's p) as Markdown. Already completed jobs are skipped on a resumed sweep, as kdrun skips any."""
    seeds = [tuned_seed + 1 + i for i in range(n_seeds)]
    jobs = confirmation_jobs(runner, best, seeds)
    confirm_dir = runner.sweep_dir / CONFIRM_DIR
    console.print(f"the best setting{'s' if len(best) > 1 else ''} (job {', '.join(str(t.user_attrs[JOB]) for t in best)}) "
                  f"on seeds {', '.join(map(str, seeds))}, beside the student from scratch: {len(jobs)} jobs in "
                  f"{escape(str(confirm_dir))}", soft_wrap=True)
    runner.launcher.launch([[*overrides, f"hydra.sweep.subdir={CONFIRM_DIR}/{name}"]
                            for name, overrides in jobs.items()], initial_job_idx=0)
    write_report(read_sweep(confirm_dir), confirm_dir, title=f"the best settings of {runner.sweep_dir}, re-run")
    comparison = (confirm_dir / "comparison.md").read_text() if (confirm_dir / "comparison.md").is_file() else ""
    return "\n".join([f"## The best setting{'s' if len(best) > 1 else ''} on the test split, seeds "
                      f"{', '.join(map(str, seeds))}", "",
                      "Chosen on validation, measured here once on test over new seeds, beside the student from "
                      "scratch (confirm/: each job, comparison.md, report.md).", "",
                      re.sub(r"^## ", "### ", comparison, flags=re.MULTILINE)])
