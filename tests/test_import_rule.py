"""The parts talk through contracts: node/, orchestrator/ and fleet/ import proto/ and plumbing/,
never one another; proto/ holds contracts only (no paho, no SQLite, no sockets); plumbing/ imports
no part. Checked on the source (the AST), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("node", "orchestrator", "fleet")
# proto/ may not pull in the machinery: these are the plumbing's, not the contracts'.
PROTO_FORBIDDEN = ("paho", "sqlite3", "sqlite_utils", "pysqlite3", "socket", "grpc", "edgefleet.plumbing")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imports_no_other_part(part: str) -> None:
    others = [p for p in PARTS if p != part]
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources(part)
        for name in _imports(path)
        if any(name == f"edgefleet.{o}" or name.startswith(f"edgefleet.{o}.") for o in others)
    ]
    assert not offenders, "\n".join(offenders)


def test_proto_holds_contracts_only() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources("proto")
        if "_pb2" not in path.name  # generated gRPC stubs import grpc by design
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in PROTO_FORBIDDEN)
    ]
    assert not offenders, "\n".join(offenders)


def test_plumbing_imports_no_part() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _sources("plumbing")
        for name in _imports(path)
        if any(name.startswith(f"edgefleet.{p}") for p in PARTS)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_rule_sees_an_offender(tmp_path: Path) -> None:
    """The checker itself finds a cross-part import, plain or lazy."""
    bad = tmp_path / "x.py"
    bad.write_text(
        "def f():\n    from edgefleet.orchestrator.registry import Registry\n    import edgefleet.fleet.cli\n"
    )
    assert {"edgefleet.orchestrator.registry", "edgefleet.fleet.cli"} <= _imports(bad)
