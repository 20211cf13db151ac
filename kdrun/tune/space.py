"""A study's search space, read from Hydra's sweep grammar as the hydra-optuna-sweeper plugin reads it:

    T=interval(1,16)                 a float in [1, 16]
    optim.lr='tag(log,interval(1e-4,1e-1))'   a float, sampled on a log scale
    epochs='tag(int,interval(5,20))'  an integer in [5, 20]
    batch_size=range(32,129,32)      an integer on a grid (start, stop exclusive, step)
    teacher=mlp,cnn_teacher          a choice (choice(...) alike)

Every other override is fixed for all trials. No Optuna here: the preflight reads the same space (to
check its ends before the first trial) without the optional extra installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from kdrun.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` is categorical (choices), float or int (low..high, log scale, step)."""
    key: str  # the override's key, as typed (+key, group/option keys included)
    kind: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    text: str = ""  # the override as typed, for messages

    @property
    def prefix(self) -> str:
        """`++` before a loss term's key: add the term or set its key, as the CLI does (kdrun/cli/main.py)."""
        return "++" if self.key.startswith("loss.terms.") else ""

    def ends(self) -> list:
        """The values the preflight checks: every choice, or both ends of a range."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: tuple[str, ...]  # the other overrides, as typed

    def overrides(self, values: dict) -> list[str]:
        """A trial's overrides: the fixed ones, then each searched key at its value."""
        return [*self.fixed, *(f"{p.prefix}{p.key}={format_value(values[p.key])}" for p in self.params)]


def format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_space(arguments: list[str]) -> SearchSpace:
    """The search space of `arguments` (sweeper params first, then the command line's overrides, which win)."""
    parser, overrides = OverridesParser.create(), []
    for argument in arguments:
        try:
            overrides.append(parser.parse_override(argument))
        except Exception as exc:  # Hydra's grammar error: its first line says what it could not read
            raise ConfigError(f"search space refused before any trial: {argument!r} is not Hydra's override "
                              f"grammar ({str(exc).strip().splitlines()[0]}); a search is written "
                              f"'T=interval(1,16)', 'epochs=range(5,21,5)' or teacher=mlp,cnn_teacher") from exc
    # A later override of a key replaces an earlier one: the command line wins over a preset's params.
    latest: dict[str, Param | str] = {}
    for override in overrides:
        key = _name(override)
        latest[key] = _param(override) if override.is_sweep_override() else override.input_line
    params = [v for v in latest.values() if isinstance(v, Param)]
    fixed = [v for v in latest.values() if isinstance(v, str)]
    if not params:
        raise ConfigError("an Optuna sweep needs a search space: give at least one key to search, e.g. "
                          "'T=interval(1,16)', 'loss.terms.ce.weight=interval(0,1)' or teacher=mlp,cnn_teacher")
    return SearchSpace(tuple(params), tuple(fixed))


def _name(override: Override) -> str:
    """The key as a person names it: a loss term's key without the `++` the CLI adds (loss.terms.kd.T)."""
    key = override.get_key_element()
    return key.removeprefix("++") if key.startswith("++loss.terms.") else key


def _param(override: Override) -> Param:
    key, value, text = _name(override), override.value(), override.input_line
    tags = set(getattr(value, "tags", set()))
    if isinstance(value, ChoiceSweep):
        choices = tuple(value.list)
        if any(not isinstance(c, (str, int, float, bool, type(None))) for c in choices):
            raise ConfigError(f"{text}: a choice must be a number, a word or null, not a list or a dict")
        return Param(key, "categorical", choices=choices, text=text)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step <= 0 or stop <= start:
            raise ConfigError(f"{text}: range(start, stop, step) needs start < stop and step > 0")
        n = int((stop - start - 1e-12) // step)  # the last grid point below stop
        is_int = all(isinstance(v, int) for v in (start, stop, step))
        return Param(key, "int" if is_int else "float", low=start, high=start + n * step, step=step, text=text)
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not low < high:
            raise ConfigError(f"{text}: interval(low, high) needs low < high")
        log = "log" in tags
        if log and low <= 0:
            raise ConfigError(f"{text}: a log-scale interval needs low > 0")
        if "int" in tags:
            return Param(key, "int", low=int(low), high=int(high), log=log, text=text)
        return Param(key, "float", low=float(low), high=float(high), log=log, text=text)
    raise ConfigError(f"{text}: an Optuna sweep reads interval(...), range(...) and choices (a,b or choice(a,b))")
