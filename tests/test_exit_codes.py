"""One table of exit codes: spark_relay/errors.py. The docs and every --help agree with it.

docs/operating.md holds the table (checked row by row); every other mention of an
exit code in the README, docs/ and any command's --help must sit in a sentence
that names what that code means (:data:`MEANS`).
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from spark_relay.cli import _register, cli
from spark_relay.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent

#: Words, one of which a sentence mentioning the code must hold (lower case).
MEANS = {
    0: ("success", "stop", "sigterm", "converge", "caught up", "end", "done", "nothing to do"),
    1: ("unexpected",),
    2: ("config", "setting", "option", "usage"),
    3: ("api", "retr", "scan"),
    4: ("api", "key", "forbidden", "filter"),
    5: ("kafka", "acknowledg"),
    6: ("sink", "store", "dead letter"),
    7: ("status", "unhealthy", "differ", "reconcile", "demo", "health"),
    8: ("purge",),
    9: ("poller", "lock"),
    10: ("kafka", "registry", "postgresql", "api", "answer", "reach", "database"),
    11: ("clock", "date"),
    130: ("interrupt", "ctrl-c", "sigint", "abort", "signal"),
}

_MENTION = re.compile(
    r"(?i)\bexit(?:s|ed)?(?:\s+at\s+once)?(?:\s+with)?(?:\s+(?:exit\s+)?code)?\s+\(?(\d+)\b"
)


def _sentences(text: str):
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*[|#-])", text):
        yield from re.split(r"(?<=[.!?])\s+(?=[A-Z`*(])", " ".join(paragraph.split()))


def _mentions(text: str):
    for sentence in _sentences(text):
        for match in _MENTION.finditer(sentence):
            yield int(match.group(1)), sentence


def _commands(group: click.Group, path=()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _help_texts():
    _register()
    yield ("spark-relay",), "\n\n".join(filter(None, [cli.help, cli.epilog]))
    for path, command in _commands(cli):
        texts = [command.help, command.epilog, *(getattr(p, "help", None) for p in command.params)]
        yield path, "\n\n".join(filter(None, texts))


def _documents():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield path.relative_to(ROOT), path.read_text()


def test_every_code_has_its_meaning():
    assert set(MEANS) == set(EXIT_CODES), "a new exit code needs its words in MEANS"


def test_operating_docs_hold_the_table():
    text = (ROOT / "docs" / "operating.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `?(\d+)`? \| (.+?) \|$", section, re.M))
    assert {int(k): v for k, v in rows.items()} == EXIT_CODES


_TEXTS = [*_documents(), *(("spark-relay " + " ".join(p), t) for p, t in _help_texts())]


@pytest.mark.parametrize(("where", "text"), _TEXTS, ids=[str(where) for where, _ in _TEXTS])
def test_each_mention_agrees_with_the_table(where, text):
    wrong = [
        f"{where}: exit {code} in {sentence!r}"
        for code, sentence in _mentions(text)
        if code not in EXIT_CODES or not any(w in sentence.lower() for w in MEANS[code])
    ]
    assert not wrong, "\n".join(wrong)


def test_the_mentions_are_found():
    found = {code for _, text in _documents() for code, _ in _mentions(text)}
    assert {2, 6, 7, 8, 9} <= found


def test_each_error_exits_with_a_code_of_the_table_that_means_it():
    import spark_relay.errors as errors

    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.RelayError)
    ]
    assert len(classes) >= 10
    for cls in classes:
        if cls is errors.RelayError:
            assert cls.exit_code == 1
            continue
        assert cls.exit_code in EXIT_CODES, cls
        said = f"{cls.__name__} {cls.__doc__}".lower()
        assert any(w in said for w in MEANS[cls.exit_code]), (cls, EXIT_CODES[cls.exit_code])
