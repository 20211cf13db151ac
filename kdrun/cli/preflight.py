"""A sweep's jobs checked before the first one starts.

Each job's config is composed with Hydra's compose API, exactly as the launch will
compose it, then validated; where the sweep directory already exists, each job
directory must be able to take its job (a new run: nothing there; a resume: the
same config). A bad value in the last job thus fails in a second, not hours in,
and a refused sweep touches no sweep-level file: Hydra writes multirun.yaml and the
summary only after this check has passed.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from omegaconf import DictConfig, OmegaConf, open_dict

from kdrun.errors import ConfigError, KdrunError
from kdrun.config.plausibility import check_plausible
from kdrun.config.recipes import apply_recipes
from kdrun.methods.terms.compose import complete_terms
from kdrun.report.jobs import is_job_dir
from kdrun.config.resume import check_can_start, check_completed_intact, check_same_config, is_completed
from kdrun.run import check_run_config
from kdrun.config.schema import unknown_key_message
from kdrun.tune.preflight import check_study, compose_sweep_config, is_study

MULTIRUN_FLAGS = ("-m", "--multirun")


def sweep_jobs(argv: list[str]) -> list[list[str]] | None:
    """The override list of each job of `kdrun -m ARGS`, in launch order; None when this is no plain
    sweep (no -m, or Hydra flags such as --cfg whose handling is Hydra's own)."""
    if not any(flag in argv for flag in MULTIRUN_FLAGS):
        return None
    args = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in args):
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # a grammar error: Hydra reports it, with its own pointer into the line
        return None
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def existing_sweep_dir(args: list[str]) -> Path | None:
    """The sweep directory named on the command line (hydra.sweep.dir=D, or resume=D), if it exists.
    Job k lives in D/k unless hydra.sweep.subdir is changed, in which case the jobs are not located."""
    values = dict(a.lstrip("+").split("=", 1) for a in args if "=" in a)
    if "hydra.sweep.subdir" in values:
        return None
    named = values.get("hydra.sweep.dir")
    if named is None and values.get("resume") not in (None, "", "null", "auto"):
        named = values["resume"]
    if named is None or "${" in named or "," in named:
        return None
    path = Path(named).expanduser()
    return path if path.is_dir() else None


def compose_job(overrides: list[str]) -> DictConfig:
    """The job config the job will run: the hydra node removed, the chosen options' recipes applied."""
    return as_job(compose("config", overrides=overrides, return_hydra_config=True), overrides)


def as_job(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A composed config (with its hydra node) as the job runs it: see compose_job."""
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    apply_recipes(cfg, choices, overrides)
    complete_terms(cfg)  # as run.py does: a resumed run's config.yaml lists every key of its terms
    return cfg


def check_sweep(argv: list[str]) -> int:
    """Raise ConfigError naming the first job (number and overrides) that cannot run; return the job count.

    Plausibility warnings are printed once per distinct message, not once per job.
    """
    if not any(flag in argv for flag in MULTIRUN_FLAGS) or checked_as_study(
            [a for a in argv if a not in MULTIRUN_FLAGS]):
        return 0
    jobs = sweep_jobs(argv)
    if not jobs:
        return 0
    sweep_dir = existing_sweep_dir([a for a in argv if a not in MULTIRUN_FLAGS])
    warned: set[str] = set()
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        for num, overrides in enumerate(jobs):
            try:
                cfg = compose_job(overrides)
            except KdrunError as exc:
                raise ConfigError(f"sweep refused before any job ran: job {num} ({' '.join(overrides)}): {exc}")
            except Exception as exc:  # a composition error: ours where kdrun can say it better, else Hydra's
                explain_missing_key(exc, overrides)
                return 0
            try:
                check_run_config(cfg)  # types, ranges, known keys, the strategy's own rules
                check_plausible(cfg, warned=warned)
                if sweep_dir is not None:
                    check_job_dir(cfg, sweep_dir / str(num))
            except KdrunError as exc:
                raise ConfigError(f"sweep refused before any job ran: job {num} ({' '.join(overrides)}): {exc}")
    return len(jobs)


def checked_as_study(args: list[str]) -> bool:
    """An Optuna sweep (hydra/sweeper=optuna) has no job list to check: its objective and search space are
    checked instead (kdrun/tune/preflight.py). False for any other sweep."""
    if any(a.startswith("-") for a in args):
        return False
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        try:
            cfg = compose_sweep_config(args)
        except Exception:  # a grammar or composition error: the plain checks (or Hydra) report it
            return False
        if not is_study(cfg):
            return False
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("hydra/sweeper=optuna needs Optuna, an optional extra: pip install 'kdrun[tune]'")
        check_study(cfg, args, compose_job)
    sweep_dir = existing_sweep_dir(args)
    if sweep_dir is not None and cfg.resume is None and any(is_job_dir(p) for p in sweep_dir.iterdir()):
        raise ConfigError(f"{sweep_dir} already holds a study's trials; add resume=auto to go on with it "
                          f"(finished trials are kept), or choose another hydra.sweep.dir")
    return True


def check_single_run(argv: list[str]) -> None:
    """For a single run, before Hydra writes into its folder: every `a.b=v` names a key the chosen options
    have (see explain_missing_key), and a resume of an existing run has that run's config (else Hydra
    would already have rewritten the run's .hydra/ files when run.py refuses it)."""
    if any(a.startswith("-") for a in argv):
        return  # -m is check_sweep's; --cfg, --help and other flags are Hydra's own
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        try:
            cfg = compose("config", overrides=argv, return_hydra_config=True)
        except Exception as exc:
            explain_missing_key(exc, argv)
            return  # any other composition error is Hydra's to report
        run_dir = resumed_run_dir(argv)
        if run_dir is not None:
            check_job_dir(as_job(cfg, argv), run_dir)


def resumed_run_dir(args: list[str]) -> Path | None:
    """The existing run folder a single run resumes: resume=D, or hydra.run.dir=D with resume=auto."""
    values = dict(a.lstrip("+").split("=", 1) for a in args if "=" in a)
    resume = values.get("resume")
    named = values.get("hydra.run.dir") if resume == "auto" else resume
    if resume in (None, "", "null") or named is None or "${" in named:
        return None
    path = Path(named).expanduser()
    return path if path.is_dir() else None


def explain_missing_key(error: Exception, overrides: list[str]) -> None:
    """A key that kdrun declares but the chosen group option lacks (optim.momentum with optim=adamw): Hydra's
    own message would advise adding it with `+`, which forces a key the option never reads. Raise ConfigError
    naming the option and its keys instead; any other composition error is left to Hydra."""
    missing = re.search(r"Could not override '([^']+)'", str(error))
    if missing is None:
        return
    key = missing.group(1)
    group, _, _ = key.rpartition(".")
    rest = [o for o in overrides if o.split("=", 1)[0] != key]
    try:
        cfg = compose("config", overrides=rest, return_hydra_config=True)
    except Exception:
        return
    option = cfg.hydra.runtime.choices.get(group.split(".")[0])
    node = OmegaConf.select(cfg, group) if group else cfg
    siblings = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    chosen = f" with {group.split('.')[0]}={option}" if option else ""
    raise ConfigError(unknown_key_message(key, siblings) + f"{chosen}: that option does not read it")


def check_job_dir(cfg: DictConfig, run_dir: Path) -> None:
    """What run.py checks when the job starts, done before the sweep starts."""
    check_can_start(cfg, run_dir)
    if cfg.resume is not None and run_dir.is_dir():
        check_same_config(cfg, run_dir)
        if is_completed(run_dir):
            check_completed_intact(run_dir)


# Command-line keys that name where Hydra and kdrun will create folders.
LOCATION_KEYS = ("paths.outputs", "hydra.run.dir", "hydra.sweep.dir", "resume")


def check_output_locations(argv: list[str], cwd: Path | None = None) -> None:
    """Refuse, with a message, output folders that cannot be created or written, before Hydra tries
    (its own failure is a traceback, or "An error occurred during Hydra's exception formatting")."""
    values = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    named = {key: values[key] for key in LOCATION_KEYS if values.get(key) not in (None, "", "null", "auto")}
    if "paths.outputs" not in named and "hydra.run.dir" not in named and "hydra.sweep.dir" not in named:
        named["paths.outputs (default)"] = "outputs"
    for key, value in named.items():
        if "${" in value:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (cwd or Path.cwd()) / path
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{key}={value}: {existing} is a file, not a folder, so no run can be written "
                              f"under it; choose another folder (e.g. paths.outputs=outputs)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}={value}: {existing} is read-only for this user, so no run can be written "
                              f"under it; choose a writable folder (e.g. paths.outputs=$HOME/kdrun-outputs)")


def config_groups() -> set[str]:
    """The config groups kdrun ships (dataset, teacher, ...): `group=option` overrides choose in them."""
    return {p.name for p in resources.files("kdrun.conf").iterdir() if p.is_dir() and not p.name.startswith("_")}


def group_options(group: str, search_dirs: list[Path]) -> list[str]:
    """The options of a config group: kdrun's YAML files, plus those of any `hydra.searchpath` folder."""
    folders = [resources.files("kdrun.conf").joinpath(group), *(d / group for d in search_dirs)]
    return sorted({p.name[:-5] for f in folders if f.is_dir() for p in f.iterdir() if p.name.endswith(".yaml")})


def check_group_choices(argv: list[str]) -> None:
    """Refuse `group=option` (or `group=a,b` in a sweep) naming an option the group does not have, with its
    options and a "did you mean" (Hydra's own answer is a 35-line dump and rc=1). A search path kdrun cannot
    list (pkg://, or an interpolation) leaves the check to Hydra."""
    args = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # a grammar error: Hydra reports it, with its own pointer into the line
        return
    search_dirs: list[Path] = []
    for override in parsed:
        if override.key_or_group == "hydra.searchpath":
            entries = override.value() if isinstance(override.value(), list) else [override.value()]
            if not all(isinstance(e, str) and e.startswith("file://") and "${" not in e for e in entries):
                return
            search_dirs += [Path(e[len("file://"):]).expanduser() for e in entries]
    groups = config_groups()
    for override in parsed:
        group = override.key_or_group
        if group not in groups or override.package is not None or override.is_add() or override.is_delete():
            continue
        value = override.value()
        chosen = value.list if isinstance(value, ChoiceSweep) else [value]
        if not all(v is None or isinstance(v, str) for v in chosen):
            continue  # ranges, globs, lists: Hydra's to read
        options = group_options(group, search_dirs)
        for option in chosen:
            if option is None:  # Hydra's answer is a ValueError traceback
                raise ConfigError(f"{group}=null: a group takes one of its options, not null; leave {group}= out "
                                  f"for its default (options: {', '.join(options)})")
            if option not in options:
                match = difflib.get_close_matches(option, options, n=1)
                hint = f"; did you mean {group}={match[0]}?" if match else ""
                raise ConfigError(f"{group}={option}: no such {group} option{hint} (options: {', '.join(options)})")
