"""The registry that `strategy=` picks from, and what a strategy's file imports.

A strategy is one class in one file: it declares its own config keys (`Config`, a dataclass of
kdrun.keys keys), checks how they combine with the rest of the config (`validate`), builds
itself from the config (`from_config`) and registers under its `strategy=` name with `@register`.
Its `step` turns a batch into the student's logits and named loss terms (kdrun/engine/contract.py);
the trainer minimises their sum. A method that needs several fits (born-again) overrides `run`.
"""

from __future__ import annotations

from kdrun.engine.contract import Batch, Fit, Setup, StepOutput, Strategy
from kdrun.errors import ConfigError

__all__ = ["Batch", "Fit", "STRATEGIES", "Setup", "StepOutput", "Strategy", "register", "strategy_class"]


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make `cls` the strategy that `strategy=<cls.name>` picks."""
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"two strategies are named {cls.name!r}: {STRATEGIES[cls.name].__qualname__} and "
                         f"{cls.__qualname__}")
    STRATEGIES[cls.name] = cls
    return cls


def strategy_class(name: str) -> type[Strategy]:
    if not isinstance(name, str):
        raise ConfigError(f"strategy.name must be a string, got {name!r}")
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; allowed: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]
