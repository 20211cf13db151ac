"""How a config key is declared: its type (the annotation), its default, bounds or choices, and its role.

    result    changes what is trained or measured (the default)
    seed      a random seed: runs that differ only here are repeats of one setting
    location  where files are read or written
    display   how a run is shown or logged
    speed     how fast it runs, never what it computes

Groups (kdrun.config.schema), strategies and loss terms all declare their keys with `key`; the checks that read
the declarations live in kdrun.config.schema.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable

ROLES = ("result", "seed", "location", "display", "speed")


# Short keys people type, and the group keys conf/config.yaml feeds from them (fnmatch patterns): the
# group key holds the value a run used; a recipe does not override a key whose short key was typed.
SHORT_KEYS = {"T": ("loss.terms.*.T",), "epochs": ("trainer.epochs",), "batch_size": ("trainer.batch_size",)}


def key(*, default: Any = None, role: str = "result", low: float | None = None, strict: bool = False,
        choices: tuple | Callable[[], tuple] | None = None, doc: str = "", follows: str | None = None) -> Any:
    """A declared config key: `low` (with `strict`: exclusive) bounds a number, `choices` lists the values
    allowed (a callable for a registry that fills at import). Groups keep their defaults in YAML (default
    None here); a loss term's defaults are declared here, beside the key. `follows` names the short key
    whose value a term key takes when the config does not set it (a temperature follows `T`)."""
    assert role in ROLES, role
    assert not isinstance(default, (list, dict)), "a mutable default would be shared; use a tuple or None"
    return field(default=default, metadata={"role": role, "low": low, "strict": strict, "choices": choices,
                                            "doc": doc, "follows": follows})
