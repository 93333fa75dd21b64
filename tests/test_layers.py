"""The imports point down the layers (issue 14, item 5).

Top to bottom: the application (``spark_relay.cli``, ``commands``, ``demo``,
``status``, ``reconcile``) → ``producer`` and ``consumers``, which meet only in
Kafka and never import each other → the contract (``schemas``) → the ground
(the rest of ``spark_relay``: settings, errors, logs, metrics, health, app).
``devstack`` stands apart: it may use the contract and the ground, and only the
application may import it, inside a function (a devstack command or the
embedded demo), so a runtime install without the devstack still runs.

Every module's imports are read with :mod:`ast`, function-level ones included;
each failure names the importing file, its line and the imported module.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spark_relay", "producer", "consumers", "schemas", "devstack")
APPLICATION = {f"spark_relay.{m}" for m in ("cli", "commands", "demo", "status", "reconcile")}
#: Height of each layer; an import may point to its own layer or a lower one.
RANK = {"application": 3, "producer": 2, "consumers": 2, "contract": 1, "ground": 0}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported first-party module
    path: Path
    line: int
    lazy: bool  # inside a function

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at module level"
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} imports {self.target} ({where})"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def layer(module: str) -> str:
    top = module.split(".")[0]
    if top == "spark_relay":
        return "application" if module in APPLICATION else "ground"
    return {"schemas": "contract"}.get(top, top)


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, node: ast.AST, lazy: bool) -> None:
        # the longest first-party module the name refers to (x.y.z → x.y when z is not a module)
        while name and name not in known:
            name = name.rpartition(".")[0]
        imp = Import(module, name, path, node.lineno, lazy)
        if name and name != module and imp not in found:  # `from m import a, b`: one arrow
            found.append(imp)

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, lazy)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    add(f"{base}.{alias.name}", child, lazy)
            visit(child, inner)

    visit(tree, False)
    return found


def all_imports() -> list[Import]:
    known = modules()
    return [imp for module, path in known.items() for imp in imports_of(module, path, known)]


def wrong_way(imp: Import) -> str | None:
    """Why this import breaks the layering, or None."""
    source, target = layer(imp.source), layer(imp.target)
    if source == target:
        return None
    if target == "devstack":
        if source == "application" and imp.lazy:
            return None
        return "the runtime never imports the devstack (the application may, inside a function)"
    if source == "devstack":
        return (
            None if target in ("contract", "ground") else f"the devstack may not use the {target}"
        )
    if {source, target} == {"producer", "consumers"}:
        return "producer and consumers meet only in Kafka"
    if RANK[target] > RANK[source]:
        return f"points up: the {source} layer may not import the {target} layer"
    return None


def package_of(module: str, known: dict[str, Path]) -> str:
    """The package a module belongs to; spark_relay counts as two: its application and ground."""
    name = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
    if name == "spark_relay":
        return f"spark_relay ({layer(module)})"
    return name


def package_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        a, b = package_of(imp.source, known), package_of(imp.target, known)
        if a != b:
            edges[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted({package_of(m, known) for m in known}):
        if node not in index:
            connect(node)
    return cycles


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: module- and function-level, relative, ``from package import module``."""
    known = modules()
    source = ROOT / "consumers" / "example.py"
    fake = tmp_path / "example.py"
    fake.write_text(
        "import producer.poller\n"
        "from . import runner\n"
        "from schemas import Serde\n"
        "def f():\n"
        "    from devstack.kafka import DEVSTACK_ENV\n"
    )
    found = imports_of("consumers.example", fake, {**known, "consumers.example": source})
    assert [(i.target, i.lazy) for i in found] == [
        ("producer.poller", False),
        ("consumers.runner", False),
        ("schemas", False),
        ("devstack.kafka", True),
    ]
    reasons = [wrong_way(i) for i in found]
    assert reasons[0] == "producer and consumers meet only in Kafka"
    assert reasons[1] is None and reasons[2] is None
    assert "never imports the devstack" in reasons[3]
    up = Import("schemas.serde", "spark_relay.cli", fake, 1, False)
    assert "points up" in wrong_way(up)


def test_every_import_points_down() -> None:
    bad = [f"{imp}: {reason}" for imp in all_imports() if (reason := wrong_way(imp))]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle_between_packages() -> None:
    imports = all_imports()
    cycles = package_cycles(imports)
    if cycles:
        known = modules()
        lines = []
        for group in cycles:
            lines.append(" <-> ".join(group))
            lines += [
                f"  {imp}"
                for imp in imports
                if package_of(imp.source, known) in group
                and package_of(imp.target, known) in group
                and package_of(imp.source, known) != package_of(imp.target, known)
            ]
        pytest.fail("import cycles between packages:\n" + "\n".join(lines))
