"""Recipes a model or strategy carries: defaults that apply unless the command chose otherwise.

A config file may hold a `recipe:` block (conf/student/cnn_student.yaml: Adam, without
which that BatchNorm-free CNN diverges under the default SGD; conf/strategy/online.yaml:
DML's ce and kd weights of 1 at T=1), typed in kdrun/config/schema.py (Recipe): a whole `optim`, `loss` keys.
One applies when nothing the user wrote sets that key: no command-line override of it (`optim=...`,
`optim.lr=...`, `loss.terms.kd.weight=...`, the short key `T` for a term's `T`) and no experiment
preset that sets it. Precedence: the strategy's recipe, then the student's, then (for a
strategy that trains a teacher) the teacher's, each only for keys not yet decided.

The teacher's optimiser (teacher.optim) is the one the config files give: what the run would use
without its command-line `optim=` / `optim.*` overrides, which are the student's. So a sweep over the
student's learning rate trains one teacher. `teacher.optim={...}` sets keys of it.
"""

from __future__ import annotations

from contextlib import nullcontext
from fnmatch import fnmatchcase
from importlib import resources
from typing import Mapping

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from kdrun.keys import SHORT_KEYS
from kdrun.strategies.catalog import STRATEGIES, strategy_class


def _flat_keys(tree, prefix: str = "") -> set[str]:
    if not isinstance(tree, Mapping):
        return {prefix} if prefix else set()
    keys = {prefix} if prefix else set()
    for key, value in tree.items():
        keys |= _flat_keys(value, f"{prefix}.{key}" if prefix else str(key))
    return keys


def _preset_keys(experiment: str | None) -> set[str]:
    """Keys an experiment preset sets (its body and its `override /group` lines)."""
    if not experiment:
        return set()
    path = resources.files("kdrun.conf").joinpath("experiment", f"{experiment}.yaml")
    if not path.is_file():
        return set()
    node = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=False) or {}
    keys = _flat_keys({k: v for k, v in node.items() if k != "defaults"})
    for entry in node.get("defaults", []):
        if isinstance(entry, Mapping):
            for group in entry:
                keys.add(str(group).removeprefix("override ").strip("/"))
    return keys


def chosen_keys(overrides: list[str], experiment: str | None) -> set[str]:
    """Every dotted key (and group) the command line or the experiment preset sets."""
    keys = _preset_keys(experiment)
    for item in overrides:
        keys.add(item.split("=", 1)[0].lstrip("+~"))
    return keys


def _is_chosen(key: str, chosen: set[str]) -> bool:
    """A key is chosen if it, a parent (a group), a child (optim.lr for optim) or its short key was set."""
    parts = key.split(".")
    if any(".".join(parts[:i]) in chosen for i in range(1, len(parts) + 1)):
        return True
    if any(c.startswith(key + ".") for c in chosen):
        return True
    return any(short in chosen and any(fnmatchcase(key, p) for p in patterns) for short, patterns in SHORT_KEYS.items())


def _recipe_of(group: str, option: str | None) -> dict:
    """The option file's recipe as {dotted key: value}; `optim` stays whole (one optimiser, not a mix)."""
    if option is None:
        return {}
    path = resources.files("kdrun.conf").joinpath(group, f"{option}.yaml")
    if not path.is_file():
        return {}
    node = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=False) or {}
    recipe = node.get("recipe") or {}
    flat = {"optim": recipe["optim"]} if "optim" in recipe else {}
    for group_name, keys in recipe.items():
        if group_name != "optim":
            flat.update({k: v for k in sorted(_flat_keys(keys, group_name)) if not isinstance(v := _at(recipe, k), Mapping)})
    return flat


def _at(tree: Mapping, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def apply_recipes(cfg: DictConfig, choices: Mapping[str, str | None], overrides: list[str]) -> list[str]:
    """Apply the recipes of the chosen strategy, student and teacher; returns what was applied, for the log."""
    chosen = chosen_keys(overrides, choices.get("experiment"))
    sources = [("strategy", choices.get("strategy")), ("student", choices.get("student"))]
    if cfg.strategy.name in STRATEGIES and strategy_class(cfg.strategy.name).uses_teacher_recipe:
        sources.append(("teacher", choices.get("teacher")))
    applied, decided = [], set()
    for group, option in sources:
        for key, value in _recipe_of(group, option).items():
            if key in decided or _is_chosen(key, chosen):
                continue
            decided.add(key)
            if key == "optim":  # a whole optimiser: its own file's keys, then the recipe's
                base = _optim_file(value["name"])
                value = OmegaConf.merge(base, value)
            with open_dict(cfg):
                OmegaConf.update(cfg, key, value, merge=False)
            applied.append(f"{key} from {group}={option}'s recipe")
    resolve_teacher_optim(cfg, overrides)
    return applied


def _is_optim_override(item: str) -> bool:
    key = item.split("=", 1)[0].lstrip("+~")
    return key == "optim" or key.startswith("optim.")


def resolve_teacher_optim(cfg: DictConfig, overrides: list[str]) -> None:
    """teacher.optim made whole: the files' optimiser (see the module's note), with teacher.optim's own keys
    over it (over that optimiser's file when they name another one)."""
    files_only = [o for o in overrides if not _is_optim_override(o)]
    base = cfg.optim if len(files_only) == len(overrides) else _files_optim(files_only)
    own = cfg.teacher.get("optim")
    if own:
        own = OmegaConf.create(OmegaConf.to_container(own, resolve=True))
        if own.get("name") and own.name != base.name:
            base = _optim_file(own.name)
        base = OmegaConf.merge(base, own)
    with open_dict(cfg):
        cfg.teacher.optim = OmegaConf.create(OmegaConf.to_container(base, resolve=True))


def _files_optim(overrides: list[str]) -> DictConfig:
    """The optimiser of the config composed from these overrides, recipes applied."""
    ready = nullcontext() if GlobalHydra.instance().is_initialized() else \
        initialize_config_module("kdrun.conf", version_base="1.3")
    with ready:
        composed = compose("config", overrides=overrides, return_hydra_config=True)
    choices = dict(composed.hydra.runtime.choices)
    with open_dict(composed):
        del composed["hydra"]
    apply_recipes(composed, choices, overrides)
    return composed.optim


def _optim_file(name: str) -> DictConfig:
    return OmegaConf.create(resources.files("kdrun.conf").joinpath("optim", f"{name}.yaml").read_text())
