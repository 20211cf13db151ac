"""Every strategy kdrun ships, registered by importing its module, plus those of the `plugins` modules
a config names (a user's own methods). Adding a method is one module in this package and one YAML."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing

import kdrun.strategies as package
from kdrun.errors import ConfigError
from kdrun.strategies.base import STRATEGIES, strategy_class

for _module in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"{package.__name__}.{_module.name}")

__all__ = ["STRATEGIES", "any_strategy_config", "import_plugins", "strategy_class"]


def import_plugins(modules) -> None:
    """Import the modules a config's `plugins` names, so the strategies and losses they define register."""
    for name in modules or ():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import {name!r} ({exc}); give a module on the Python path "
                              f"(e.g. plugins=[mypkg.methods])") from exc


def any_strategy_config() -> type:
    """One dataclass with every registered strategy's keys: what `strategy.<key>` may name at all."""
    fields = {}
    for cls in STRATEGIES.values():
        hints = typing.get_type_hints(cls.Config)
        for f in dataclasses.fields(cls.Config):
            fields.setdefault(f.name, (f.name, hints[f.name], f))
    return dataclasses.make_dataclass("AnyStrategyConfig", list(fields.values()))
