"""Every name of code the docs mention exists (issue 23 item 19: docs/scale.md described a
`check_in_memory` refusal that no longer existed). A backticked span is checked when it looks like code:
a file of the repository (`kdrun/sources/data/feed.py`, `sources/models/base.py`), a module path (`kdrun.config.schema.key`),
a class or `Class.method`, or a snake_case name (`check_config`). Config keys (`loss.alpha`), commands and
assignments are left alone; a snake_case name passes if kdrun's code or config uses it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPAN = re.compile(r"`([^`\n]+)`")
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
CODE_FILES = [*(ROOT / "kdrun").rglob("*.py"), *(ROOT / "kdrun").rglob("*.yaml"), *(ROOT / "conf").rglob("*.yaml")]
# The code, the config, and the names of config options (`keras_mnist` is conf/experiment/keras_mnist.yaml).
SOURCE = "\n".join([*(p.read_text() for p in CODE_FILES), *(p.stem for p in CODE_FILES)])
METRIC_PREFIX = "loss_"  # metrics.jsonl's loss_<term> columns: the trainer writes f"loss_{name}" for any term


def code_names(text: str) -> list[str]:
    """The backticked spans of `text` that name code, calls' arguments dropped."""
    names = []
    for span in SPAN.findall(text):
        name = re.sub(r"\(.*\)$", "", span.strip())
        if not name or any(c in name for c in " =<>*$,'\"") or name.startswith(METRIC_PREFIX):
            continue
        if looks_like_file(name) or name.startswith("kdrun.") or re.fullmatch(rf"[A-Z]\w*(\.{IDENTIFIER})?", name) \
                or (re.fullmatch(IDENTIFIER, name) and "_" in name.strip("_")):
            names.append(name)
    return names


def looks_like_file(name: str) -> bool:
    return name.endswith(".py") or name.startswith(("kdrun/", "conf/", "tests/"))


def exists(name: str) -> bool:
    if looks_like_file(name):  # path, or path:name (defined in that file)
        path, _, defined = name.partition(":")
        found = next((p for p in (ROOT / path, ROOT / "kdrun" / path) if p.exists()), None)
        return found is not None and (not defined or bool(
            re.search(rf"^\s*(def|class) {defined}\b|^{defined} =", found.read_text(), re.M)))
    if name.startswith("kdrun."):
        return resolves(name)
    if "." in name:  # Class.attribute
        cls, attr = name.split(".")
        return bool(re.search(rf"class {cls}\b", SOURCE)) and bool(re.search(rf"\b{attr}\b", SOURCE))
    return bool(re.search(rf"(?<![\w.-]){re.escape(name)}\b", SOURCE))


def resolves(dotted: str) -> bool:
    """A module, or an attribute chain under the longest importable module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_name_of_code_in_the_docs_exists(doc):
    missing = sorted({name for name in code_names(doc.read_text()) if not exists(name)})
    assert not missing, f"{doc.relative_to(ROOT)} names code that does not exist: {', '.join(missing)}"


def test_the_check_finds_a_name_that_does_not_exist():
    assert code_names("refused by `check_in_memory` (`kdrun/sources/data/feed.py`), see `kdrun.config.schema.nope`") == \
        ["check_in_memory", "kdrun/sources/data/feed.py", "kdrun.config.schema.nope"]
    assert not exists("kdrun/engine/trainer.py:average_gradients") and exists("kdrun/engine/data_parallel.py:average_gradients")
    assert not exists("check_in_memory") and exists("kdrun/sources/data/feed.py") and not exists("kdrun.config.schema.nope")
    assert exists("check_config") and exists("kdrun.config.schema.key") and exists("sources/models/base.py")
