"""An Optuna study run through Hydra's launcher: Optuna asks for a trial, the launcher runs it as a kdrun job in
the sweep folder, the job's metrics.json summary gives the objective, Optuna is told.

The study lives in `<sweep>/study.db` (SQLite) unless hydra.sweeper.storage names another database, so a
study killed mid-way goes on where it stopped when the same command runs again with resume=<sweep>: a
finished trial is never rerun, and a trial that was running is retried in its own job folder (from its
checkpoints/last.pt where it has one). Job folders are `<sweep>/<n>`, numbered in the order trials start,
as for a plain sweep; each trial records its folder's number (user attribute `job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from hydra.core.utils import JobReturn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from kdrun.console import console
from kdrun.io import atomic_write_text
from kdrun.report.latency import LatencyMeter
from kdrun.tune.outputs import FAILED, JOB
from kdrun.tune.objective import directions, objective_names, objective_values
from kdrun.tune.preflight import study_arguments, validation_override
from kdrun.tune.space import Param, SearchSpace, parse_space

DATABASE = "study.db"
SWEEP = "sweep_dir"  # user attribute: the sweep folder the trial's job runs in


@dataclass
class StudySettings:
    """hydra.sweeper.* (conf/hydra/sweeper/optuna.yaml)."""
    n_trials: int
    n_jobs: int
    storage: str | None
    study_name: str
    sampler: DictConfig | None  # hydra.sweeper.sampler, instantiated once the study's trials are known


def make_sampler(sampler_cfg: DictConfig | None, n_trials_before: int) -> optuna.samplers.BaseSampler | None:
    """The configured sampler. Its seed moves on by the trials the study already holds: a resumed study
    seeded as at its start would draw its first trials again."""
    if sampler_cfg is None:
        return None
    seed = sampler_cfg.get("seed")
    return instantiate(sampler_cfg, **({"seed": seed + n_trials_before} if seed is not None else {}))


def distribution(param: Param) -> optuna.distributions.BaseDistribution:
    if param.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(param.choices)
    if param.kind == "int":
        return optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log,
                                                    step=int(param.step or 1))
    return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)


def storage_url(settings: StudySettings, sweep_dir: Path) -> str:
    return settings.storage or f"sqlite:///{(sweep_dir / DATABASE).absolute()}"


def open_study(settings: StudySettings, sweep_dir: Path, names: list[str]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is kdrun's, not Optuna's
    study = optuna.create_study(study_name=settings.study_name, storage=storage_url(settings, sweep_dir),
                                directions=directions(names), load_if_exists=True)
    study.sampler = make_sampler(settings.sampler, len(study.get_trials(deepcopy=False))) or study.sampler
    return study


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that used up one of n_trials: completed, or run and failed (not one cut short by a kill)."""
    return trial.state == optuna.trial.TrialState.COMPLETE or (
        trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get(FAILED, False))


def retry_interrupted(study: optuna.Study, sweep_dir: Path) -> int:
    """Trials this sweep folder's killed sweep left running: closed as failed, and queued again with their
    parameters and job folder, so the next trials asked for are these. Returns how many. Trials running in
    another folder belong to another worker on a shared study (hydra.sweeper.storage) and are left alone."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING
             and t.user_attrs.get(SWEEP) == str(sweep_dir.absolute())]
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={JOB: trial.user_attrs[JOB], SWEEP: trial.user_attrs[SWEEP]})
    return len(stale)


def next_job_number(study: optuna.Study, sweep_dir: Path) -> int:
    """The next free job folder of this sweep folder (workers sharing a study each have their own)."""
    here = str(sweep_dir.absolute())
    return 1 + max((t.user_attrs.get(JOB, -1) for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get(SWEEP) == here), default=-1)


class StudyRunner:
    """Runs the trials of one study with a Hydra launcher."""

    def __init__(self, settings: StudySettings, config: DictConfig, launcher, arguments: list[str]):
        self.settings = settings
        self.config = config
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.names = objective_names(config.objective)
        self.space: SearchSpace = parse_space(study_arguments(config, arguments))
        self.distributions = {p.key: distribution(p) for p in self.space.params}
        self.extra = [o for o in (validation_override(config),) if o]
        self.launcher = launcher
        self.latency = LatencyMeter() if "latency_ms" in self.names else None

    def run(self) -> optuna.Study:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # as Hydra's basic sweeper does: the sweep's config, and what marks the folder as a sweep for resume=
        atomic_write_text(self.sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        study = open_study(self.settings, self.sweep_dir, self.names)
        if self.extra:
            console.print(f"[yellow]no validation split[/] to choose on: every trial holds out "
                          f"{self.extra[0]} of train (as results/quickstart/ did); the test split is not used "
                          f"to choose", soft_wrap=True)
        retried = retry_interrupted(study, self.sweep_dir)
        done = sum(counted(t) for t in study.get_trials(deepcopy=False))
        if done or retried:
            console.print(f"study {escape(self.settings.study_name)}: {done} trial(s) done, {retried} interrupted "
                          f"one(s) retried", soft_wrap=True)
        while (left := self.left_to_start(study)) > 0:
            batch = [study.ask(self.distributions) for _ in range(min(self.settings.n_jobs, left))]
            for trial in batch:
                if JOB not in trial.user_attrs:
                    trial.set_user_attr(JOB, next_job_number(study, self.sweep_dir))
                    trial.set_user_attr(SWEEP, str(self.sweep_dir.absolute()))
            for trial, result in zip(batch, self.launch(batch)):
                self.tell(study, trial, result)
        return study

    def left_to_start(self, study: optuna.Study) -> int:
        """n_trials is the study's total: trials done, and those other workers on a shared study are running
        (this sweep's own interrupted ones were queued again), count against it."""
        trials = study.get_trials(deepcopy=False)
        return self.settings.n_trials - sum(counted(t) or t.state == optuna.trial.TrialState.RUNNING for t in trials)

    def trial_overrides(self, params: dict) -> list[str]:
        return [*self.space.overrides(params), *self.extra]

    def launch(self, trials: list[optuna.Trial]) -> list[JobReturn]:
        """One launch per run of consecutive job numbers (a retried trial keeps its folder)."""
        results: list[JobReturn] = []
        start = 0
        for end in range(1, len(trials) + 1):
            if end == len(trials) or trials[end].user_attrs[JOB] != trials[end - 1].user_attrs[JOB] + 1:
                group = trials[start:end]
                results += self.launcher.launch([self.trial_overrides(t.params) for t in group],
                                                initial_job_idx=group[0].user_attrs[JOB])
                start = end
        return results

    def tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
        try:
            summary = result.return_value  # re-raises what the job raised
            values = objective_values({**(summary or {}), **self.measured(trial, summary)}, self.names)
        except Exception as exc:  # the job's own failure is in its metrics.json and train.log
            trial.set_user_attr(FAILED, True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            console.print(f"trial {trial.number} failed: {escape(str(exc))}", soft_wrap=True)
            return
        study.tell(trial, values)
        shown = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.names, values))
        console.print(f"trial {trial.number}: {shown}", soft_wrap=True)

    def measured(self, trial: optuna.Trial, summary: dict | None) -> dict:
        """latency_ms of the trial's student at batch 1, when the objective asks for it."""
        if self.latency is None or not summary:
            return {}
        checkpoint = self.sweep_dir / str(trial.user_attrs[JOB]) / "checkpoints" / "last.pt"
        latency = self.latency.measure(checkpoint, summary.get("device", "cpu"), summary.get("precision", "fp32"))
        return {} if latency is None else {"latency_ms": latency.ms}
