"""Every loss term kdrun ships, registered by importing its module (logit/*.py, feature/*.py), plus those
of the `plugins` modules a config names. Adding a term is one module in one of those folders."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import kdrun.methods.terms.feature as feature_package
import kdrun.methods.terms.logit as logit_package
from kdrun.errors import ConfigError
from kdrun.methods.terms.base import TERMS, Term, term_class

for _package in (logit_package, feature_package):
    for _module in pkgutil.iter_modules(_package.__path__):
        importlib.import_module(f"{_package.__name__}.{_module.name}")

__all__ = ["TERMS", "refuse_stage_key", "term_class", "term_fields"]


def term_fields(cls: type[Term]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls.Config)}


STAGE_KEY = "init_epochs"


def refuse_stage_key(name: str, key: str) -> None:
    """A stage key on a term without an initialisation stage gets its own message, not just 'unknown key'."""
    if key == STAGE_KEY and key not in term_fields(term_class(name)):
        staged = sorted(n for n, cls in TERMS.items() if STAGE_KEY in term_fields(cls))
        raise ConfigError(f"loss.terms.{name}.{key}: the {name} term has no initialisation stage; terms with one: "
                          f"{', '.join(staged)}")
