"""The docs stay true to the code they describe."""

import json
import re
from pathlib import Path

from schemas import ACCOUNT_SCHEMA, LISTING_SCHEMA, PURGE_SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_contract_documents_every_field():
    text = (ROOT / "docs" / "contract.md").read_text()
    for schema in (LISTING_SCHEMA, ACCOUNT_SCHEMA, PURGE_SCHEMA):
        for field in json.loads(schema)["fields"]:
            assert f"| `{field['name']}` |" in text, field["name"]


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:8]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_lists_every_setting():
    from dataclasses import fields

    from spark_relay.settings import Settings, env_name

    readme = (ROOT / "README.md").read_text()
    for field in fields(Settings):
        if field.name not in ("kafka", "sink"):  # the [kafka] and [sink.<name>] tables
            assert f"`{env_name(field.name)}`" in readme, env_name(field.name)


def test_readme_lists_every_option_of_the_built_in_sinks():
    from consumers.registry import cli_options_of, load_sink

    readme = (ROOT / "README.md").read_text()
    for name in ("postgres", "search", "files", "iceberg"):
        for option in cli_options_of(load_sink(name)):
            assert option.envvar == f"SPARK_RELAY_{name.upper()}_{option.name.upper()}"
            assert f"| `{option.envvar}` | `[sink.{name}] {option.name}` |" in readme, option.envvar
