"""An Optuna sweep checked before its first trial, as kdrun/cli/preflight.py checks a plain sweep's jobs.

Its jobs are not known in advance, so the search space's ends are: every choice and both ends of
every range, each composed and validated as a job (the other keys at their first end). A bad bound
(`T=interval(-1,4)`), a choice that does not exist, or a test-split objective fails in a second.
"""

from __future__ import annotations

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from kdrun.errors import ConfigError, KdrunError
from kdrun.config.plausibility import check_plausible
from kdrun.run import check_run_config
from kdrun.tune.objective import objective_names
from kdrun.tune.space import SearchSpace, parse_space

# The `_target_` of conf/hydra/sweeper/optuna.yaml (Hydra loads sweepers from the hydra_plugins package).
SWEEPER_TARGET = "hydra_plugins.kdrun_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# Held out of train when a study's dataset has no validation split, as results/quickstart/ did.
HELD_OUT_FRACTION = 0.2


def fixed_arguments(args: list[str]) -> list[str]:
    """The overrides that are no sweep (Hydra's compose takes only these); one Hydra cannot read is left to
    parse_space, which names it."""
    parser = OverridesParser.create()
    fixed = []
    for arg in args:
        try:
            if not parser.parse_override(arg).is_sweep_override():
                fixed.append(arg)
        except Exception:  # Hydra's grammar error
            continue
    return fixed


def is_study(cfg: DictConfig) -> bool:
    """Does this composed config (hydra node included) sweep with kdrun's Optuna sweeper?"""
    return cfg.hydra.sweeper.get("_target_") == SWEEPER_TARGET


def study_arguments(cfg: DictConfig, args: list[str]) -> list[str]:
    """hydra.sweeper.params (a preset's search space) first, then the command line's overrides."""
    params = cfg.hydra.sweeper.get("params") or {}
    return [*(f"{key}={value}" for key, value in params.items()), *args]


def validation_override(cfg: DictConfig) -> str | None:
    """`dataset.val_fraction=...` where the dataset has no validation split to choose on; None where it has.
    A folder dataset (image_folder) has its val/ folder or holds one out itself (val_fraction null)."""
    if cfg.dataset.get("name") == "image_folder" or cfg.dataset.get("val_fraction"):
        return None
    add = "" if "val_fraction" in cfg.dataset else "+"  # a dataset file that does not list the key
    return f"{add}dataset.val_fraction={HELD_OUT_FRACTION}"


def check_study(cfg: DictConfig, args: list[str], compose_job) -> SearchSpace:
    """Raise ConfigError for a test-split or unknown objective, a bad search space, or a search-space end
    a job would refuse; `cfg` is the sweep's config (hydra node included), `compose_job(overrides)` the
    job config the launch would run."""
    objective_names(cfg.objective)
    space = parse_space(study_arguments(cfg, args))
    extra = [o for o in (validation_override(cfg),) if o]
    firsts = {p.key: p.ends()[0] for p in space.params}
    points = [{**firsts, p.key: value} for p in space.params for value in p.ends()]
    warned: set[str] = set()
    for point in [dict(items) for items in dict.fromkeys(tuple(pt.items()) for pt in points)]:
        overrides = [*space.overrides(point), *extra]
        where = ", ".join(f"{key}={value}" for key, value in point.items())
        try:
            job = compose_job(overrides)
            check_run_config(job)
            check_plausible(job, warned=warned)
        except KdrunError as exc:
            raise ConfigError(f"search space refused before any trial: at {where}: {exc}") from exc
        except Exception as exc:  # Hydra's composition error: an option that does not exist
            raise ConfigError(f"search space refused before any trial: at {where}: "
                              f"{str(exc).splitlines()[0]}") from exc
    return space


def compose_sweep_config(args: list[str]) -> DictConfig:
    """The sweep's own config (the fixed overrides, hydra node included)."""
    return compose("config", overrides=fixed_arguments(args), return_hydra_config=True)
