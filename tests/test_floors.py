"""The dependency floors in pyproject.toml are no lower than the versions checked to work.

Each entry of :data:`VERIFIED` is a version that was installed on Python 3.11 and shown to
have what we call (and the version below it shown not to, or to have no Python 3.11 build);
the comment next to each floor in pyproject.toml names the API that decides it. Raising a
floor is always allowed; lowering one below this table needs a new check first. Packages
not in the table were not checked here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

#: (list in pyproject: "dependencies" or an extra, distribution) -> lowest verified version
VERIFIED = {
    ("dependencies", "httpx"): "0.14.0",
    ("dependencies", "click"): "8.0.0",
    ("dependencies", "psycopg"): "3.1.4",
    ("dependencies", "fastavro"): "1.7.0",
    ("dependencies", "tantivy"): "0.26.0",
    ("dependencies", "prometheus-client"): "0.4.0",
    ("parquet", "pyarrow"): "16.0.0",
    ("dev", "pyarrow"): "16.0.0",
    ("dev", "pytest"): "6.2.4",
    ("dev", "pytest-timeout"): "1.0.0",
    ("dev", "click"): "8.2.0",
    ("dev", "httpx"): "0.17.0",
    ("dev", "pyyaml"): "6.0",
}


def _requirements(where: str) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (
        project["dependencies"]
        if where == "dependencies"
        else project["optional-dependencies"][where]
    )
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


@pytest.mark.parametrize(("where", "name"), sorted(VERIFIED))
def test_each_floor_is_at_least_the_verified_version(where: str, name: str) -> None:
    requirement = _requirements(where).get(name)
    assert requirement is not None, f"{name} is no longer in [project] {where}"
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    assert floors, f"{requirement}: no >= floor"
    assert min(floors) >= Version(VERIFIED[where, name]), (
        f"{requirement} in {where} is below {VERIFIED[where, name]}, the first version checked "
        "to have what we call on Python 3.11 (see the comment in pyproject.toml)"
    )
