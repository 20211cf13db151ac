"""A dataset found missing once in a sweep is not looked for (nor downloaded) again by every later job:
those jobs fail at once with a one-line message that points at the first, full one."""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from kdrun.sources.data import DatasetNotFoundError

_missing: dict[str, str] = {}  # the dataset settings -> the job that found the files missing


def _key(cfg: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True, default=str)


def check_not_known_missing(cfg: DictConfig) -> None:
    first = _missing.get(_key(cfg))
    if first is not None:
        raise DatasetNotFoundError(f"dataset {cfg.dataset.name!r} not found, as for job {first} (its message above "
                                   f"says where kdrun looked and what to do)")


def remember_missing(cfg: DictConfig, job: str) -> None:
    _missing.setdefault(_key(cfg), job)
