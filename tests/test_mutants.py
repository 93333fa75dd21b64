"""``make mutants``: the mutants files are checked, each mutant runs in a copy of its own, a
mutant the tests catch is killed, one they miss survives, and the tree is never touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chaos import mutants

ROOT = Path(__file__).resolve().parents[1]
TARGET = "devstack/emulator/sparkql.py"
TEST = "tests/emulator/test_limits.py::test_a_syntax_error_is_not_a_constraint_error"


def _toml(path: Path, *entries: dict) -> Path:
    lines = []
    for entry in entries:
        lines.append("[[mutant]]")
        for key, value in entry.items():
            text = json.dumps(value) if not isinstance(value, str) else f"'''{value}'''"
            lines.append(f"{key} = {text}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _mutant(name: str, find: str, replace: str, **extra) -> dict:
    entry = {"name": name, "why": "a test", "file": TARGET, "find": find, "replace": replace}
    return {**entry, "tests": [TEST], **extra}


def test_every_mutants_file_of_the_repository_loads():
    loaded = mutants.load(sorted((ROOT / "mutants").glob("*.toml")))
    assert len(loaded) >= 15
    assert all(m.tests and (ROOT / m.file).is_file() for m in loaded)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_mutant("twice", "import", "x"), "occurs"),  # more than once in the file
        (_mutant("never", "no such text anywhere", "x"), "occurs 0 times"),
        (_mutant("same", "MAX_DEPTH = 2", "MAX_DEPTH = 2"), "same as find"),
        ({**_mutant("untested", "MAX_DEPTH = 2", "MAX_DEPTH = 3"), "tests": []}, "tests"),
        ({**_mutant("odd", "MAX_DEPTH = 2", "MAX_DEPTH = 3"), "extra": 1}, "unknown"),
    ],
)
def test_a_mutant_that_cannot_be_applied_as_written_is_refused(tmp_path, entry, message):
    with pytest.raises(mutants.MutantError, match=message):
        mutants.load([_toml(tmp_path / "m.toml", entry)])


def test_two_mutants_of_one_name_are_refused(tmp_path):
    one = _mutant("twin", "MAX_DEPTH = 2", "MAX_DEPTH = 3")
    two = _mutant("twin", "MAX_VALUES = 200", "MAX_VALUES = 300")
    with pytest.raises(mutants.MutantError, match="twin"):
        mutants.load([_toml(tmp_path / "m.toml", one, two)])


@pytest.mark.slow(seconds=60)
def test_a_caught_mutant_is_killed_a_missed_one_survives_and_the_tree_is_untouched(
    tmp_path, capsys
):
    before = (ROOT / TARGET).read_text()
    path = _toml(
        tmp_path / "m.toml",
        # the parser cannot tell a syntax error from a limit any more: the test sees it
        _mutant(
            "caught",
            '"Syntax": not e.constraint,',
            '"Syntax": False,',
            file="devstack/emulator/api.py",
        ),
        # a docstring: no test can see it
        _mutant("missed", '"""A small SparkQL', '"""A tiny SparkQL'),
    )

    status = mutants.main([str(path), "--jobs", "2"])

    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == {
        "mutants": 2,
        "killed": 1,
        "survived": ["missed"],
        "errors": [],
    }
    assert status == 1
    assert any(line.startswith("killed") and "caught" in line for line in lines)
    assert (ROOT / TARGET).read_text() == before


def test_the_scratch_copy_is_what_the_tests_import(tmp_path):
    copy = mutants.scratch_copy(ROOT, tmp_path / "tree")
    assert not (copy / ".venv").exists() and (copy / TARGET).is_file()
    mutants.check_imports(copy)  # raises when a package comes from elsewhere
    partial = tmp_path / "partial"
    shutil.copytree(ROOT / "chaos", partial / "chaos")  # the others: the editable install's
    with pytest.raises(RuntimeError, match="outside the scratch copy"):
        mutants.check_imports(partial)
