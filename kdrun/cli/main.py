"""`kdrun`: compose the config with Hydra, validate, run. Thin on purpose.

Exit status: 0 done; 1 a sweep with failed jobs, or an unexpected error; 2 a user
error (its message says what to change); 130 interrupted (the message gives the
command that resumes).
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra_plugins.kdrun_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig
from rich.markup import escape


from kdrun.sources.checkpoint import load_checkpoint
from kdrun.cli.cleanup import discard_unstarted_run
from kdrun.console import append_line, console, log_notes_to, note, results
from kdrun.sources.data import DatasetNotFoundError
from kdrun.distributed import init_world, launched_by_torchrun, processes_on_command_line, relaunch
from kdrun.errors import CheckpointError, ConfigError, DataError, Interrupted, KdrunError
from kdrun.cli.missing_data import check_not_known_missing, remember_missing
from kdrun.engine.progress import clock
from kdrun.cli.preflight import (check_group_choices, check_output_locations, check_single_run, check_sweep,
                             config_groups)
from kdrun.config.recipes import apply_recipes
from kdrun.report.tables import print_run_summary
from kdrun.config.resume import check_resume_argument, is_completed, register_resolvers, resume_command
from kdrun.run import check_run_config, record_failure, run_experiment
from kdrun.runtime import resolve_runtime
from kdrun.config.schema import check_override_keys
from kdrun.strategies.catalog import any_strategy_config, import_plugins
from kdrun.cli.sweep_claim import claimed_sweep_dir, named_sweep_dir

# Errors whose message is the whole story: print it, no traceback.
USER_ERRORS = (KdrunError, DatasetNotFoundError)
# Errors raised before the first training step: the run directory then holds nothing worth keeping.
BEFORE_TRAINING_ERRORS = (ConfigError, DataError, DatasetNotFoundError, CheckpointError)
INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

_failed_jobs: list[str] = []

register_resolvers()  # hydra.run.dir and hydra.sweep.dir use them
# hydra/sweeper=optuna: Hydra finds plugins by walking the hydra_plugins package, which misses an editable
# install's (setuptools maps it through an import hook); registered here, it is found however kdrun is installed.
Plugins.instance().register(OptunaSweeper)


def run_job(cfg: DictConfig) -> dict | None:
    """One Hydra job. A plain module-level function, so that launchers that run jobs in other processes
    (joblib, submitit) pickle it by reference rather than by value with everything it refers to."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    resume_target = Path(hc.sweep.dir).absolute() if multirun else run_dir
    if multirun:  # the console keeps one line per job; its notes and epochs go to its train.log
        log_notes_to(run_dir / "train.log")
    try:
        check_not_known_missing(cfg)  # a sweep looks for a missing dataset once, not once per job
        recipes = apply_recipes(cfg, hc.runtime.choices, overrides)
        check_run_config(cfg)  # a refused value is the only line on the console
        note(f"computing on {resolve_runtime(cfg.device).describe()}")  # a result's context, said first
        for recipe in recipes:
            note(f"[dim]recipe:[/] {escape(recipe)}")
        label = f"job {hc.job.num} {cfg.strategy.name}" if multirun else cfg.strategy.name
        summary = run_experiment(cfg, run_dir, overrides, label=label)
        if multirun:
            console.print(job_line(hc.job.num, overrides, summary, run_dir), markup=False, highlight=False,
                          soft_wrap=True)
        elif init_world().is_main:
            print_run_summary(summary, run_dir)
        return summary
    except Interrupted as exc:
        command = resume_command(resume_target, multirun)
        _record(run_dir, exc, overrides, status="interrupted", resume=command)
        console.print(f"[bold yellow]{escape(str(exc))}[/]\nto resume: [bold]{escape(command)}[/]", soft_wrap=True)
        sys.exit(exc.exit_status)  # in a sweep too: a signal stops the sweep, not one job
    except KeyboardInterrupt:  # before training began (loading data, building models): nothing to save
        console.print("[bold yellow]interrupted[/] before training began; nothing was saved", soft_wrap=True)
        sys.exit(INTERRUPTED)
    except Exception as exc:
        if not multirun and cfg.resume is None and isinstance(exc, BEFORE_TRAINING_ERRORS) \
                and discard_unstarted_run(run_dir):  # nothing ran: leave no folder to be listed as a failed job
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            sys.exit(2)
        _record(run_dir, exc, overrides)
        if isinstance(exc, DatasetNotFoundError):
            remember_missing(cfg, str(hc.job.num) if multirun else run_dir.name)
        if not multirun and not isinstance(exc, USER_ERRORS):
            raise
        if multirun:  # one line on the console; a traceback goes to the job's log
            log = run_dir / "train.log"
            if not isinstance(exc, USER_ERRORS):
                append_line(log, traceback.format_exc())
            where = "" if isinstance(exc, USER_ERRORS) else f" (the traceback is in {log})"
            console.print(f"[bold red]job {hc.job.num} ({escape(' '.join(overrides))}) failed:[/] "
                          f"{escape(first_line(exc))}{escape(where)}", soft_wrap=True)
        elif isinstance(exc, USER_ERRORS):
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        else:
            console.print(traceback.format_exc(), markup=False, highlight=False)
        last = run_dir / "checkpoints" / "last.pt"
        if last.is_file() and not is_completed(run_dir):
            if readable_checkpoint(last):
                console.print(f"to go on from the last checkpoint: "
                              f"[bold]{escape(resume_command(resume_target, multirun))}[/]", soft_wrap=True)
            else:  # a resume would stop on it again
                console.print(f"{escape(str(last))} cannot be read, so the run cannot go on from it; to train the "
                              f"run again from its start, remove that file and run the same command", soft_wrap=True)
        if not multirun:
            sys.exit(2)
        # In a sweep one failed job is a row in the summary, not a lost sweep.
        _failed_jobs.append(" ".join(overrides))
        return None
    finally:
        log_notes_to(None)


def first_line(exc: BaseException) -> str:
    """A failure in one line: a user error's message, else the exception's type and first line."""
    text = str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0] if text else type(exc).__name__


def job_line(num: int, overrides: list[str], summary: dict, run_dir: Path) -> str:
    """A finished sweep job in one line: what it was, its test accuracy, how long it took, where it is."""
    took = summary.get("wall_time_s")
    return (f"job {num} ({' '.join(overrides)}): {summary.get('strategy', '')} {summary.get('arch', '')} "
            f"test {summary['final_test_acc']:.2f}% (best {summary['best_test_acc']:.2f}%)"
            + (f", {clock(took)}" if took is not None else "") + f", {run_dir}")


_hydra_main = hydra.main(version_base="1.3", config_path="pkg://kdrun.conf", config_name="config")(run_job)


def _record(run_dir: Path, exc: BaseException, overrides: list[str], **kwargs) -> None:
    """Leave metrics.json saying what happened; a full disk must not hide the original error."""
    try:
        record_failure(run_dir, exc, overrides, **kwargs)
    except OSError as write_error:
        console.print(f"[red]could not record the failure in metrics.json:[/] {escape(str(write_error))}", soft_wrap=True)


def readable_checkpoint(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def plugins_on_command_line(argv: list[str]) -> list[str]:
    """The modules a `plugins=[...]` override names (Hydra's own parser reads the list)."""
    for arg in argv:
        if arg.lstrip("+").startswith("plugins="):
            try:
                value = OverridesParser.create().parse_override(arg).value()
            except HydraException as exc:
                raise ConfigError(f"cannot read {arg!r}: {exc}") from exc
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return []


def term_overrides_add_or_set(argv: list[str]) -> list[str]:
    """`loss.terms.<term>.<key>=v` sets a key of a listed term, or adds the term with its defaults: Hydra
    does both for `++` (a plain override may only change a key the preset already has)."""
    return [f"++{arg}" if arg.startswith("loss.terms.") else arg for arg in argv]


def main() -> None:
    sys.argv[1:] = term_overrides_add_or_set(sys.argv[1:])
    if "--version" in sys.argv[1:]:  # Hydra's own flag would print Hydra's version
        results.print(f"kdrun {version('kdrun')}", markup=False, highlight=False)
        return
    if any(flag in sys.argv[1:] for flag in ("-sc", "--shell-completion")):
        _hydra_main()  # install=bash|zsh|fish or a completion query: Hydra's own, no kdrun key to check
        return
    if any(flag in sys.argv[1:] for flag in ("--cfg", "-c")) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")  # show the values a run uses, not ${...} interpolations
    sweep_claim = ExitStack()  # holds the sweep folder until the sweep ends
    try:
        # Before Hydra: a typo gets kdrun's message (not Hydra's advice to add it with +), and a bad
        # resume=DIR is refused before any directory is made.
        import_plugins(plugins_on_command_line(sys.argv[1:]))  # their strategies' keys are known keys too
        check_group_choices(sys.argv[1:])
        check_override_keys(sys.argv[1:], config_groups(), any_strategy_config())
        check_resume_argument(sys.argv[1:])
        processes = processes_on_command_line(sys.argv[1:])
        if processes > 1 and ("-m" in sys.argv or "--multirun" in sys.argv):
            raise ConfigError(f"device.processes={processes} runs one job over several processes; a sweep (-m) "
                              "runs its jobs through a Hydra launcher instead (hydra/launcher=joblib, submitit_*)")
        check_output_locations(sys.argv[1:])
        # Claimed before its jobs are checked, so that no other sweep can fill the folder after the check.
        sweep_claim.enter_context(claimed_sweep_dir(named_sweep_dir(sys.argv[1:])))
        check_sweep(sys.argv[1:])  # every job's config, before Hydra writes any sweep file
        check_single_run(sys.argv[1:])
    except KdrunError as exc:
        sweep_claim.__exit__(type(exc), exc, exc.__traceback__)  # a refused sweep leaves no folder it made
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    if processes > 1 and not launched_by_torchrun():
        relaunch(sys.argv[1:], processes)
    if not init_world().is_main:  # rank 0 keeps Hydra's own files (.hydra/, the job log) for the run
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    with sweep_claim:
        try:
            _hydra_main()
        except BrokenPipeError:  # `kdrun --help | head`: the reader left; nothing more to say, and no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
            sys.exit(1)
    if _failed_jobs:
        console.print(f"[bold red]{len(_failed_jobs)} job(s) failed:[/] " + escape("; ".join(_failed_jobs)))
        sys.exit(1)


if __name__ == "__main__":
    main()
