"""The package list in pyproject.toml: a wheel (not only an editable install) must carry every module and config."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]


def test_every_code_package_and_config_group_is_listed_for_the_wheel():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    code = {".".join(p.parent.relative_to(REPO).parts) for root in ("kdrun", "hydra_plugins")
            for p in (REPO / root).rglob("__init__.py")}
    conf = REPO / setuptools["package-dir"]["kdrun.conf"]
    groups = {".".join(("kdrun.conf", *d.relative_to(conf).parts)) for d in conf.rglob("*")
              if d.is_dir() and d.name != "__pycache__"}
    assert code | groups | {"kdrun.conf"} == listed
    assert setuptools["package-data"]["*"] == ["*.yaml"]
