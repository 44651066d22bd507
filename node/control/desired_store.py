"""The node's record of applied desired state, in its SQLite database (sqlite-utils, WAL).

One row per desired-state source (`node:<id>`, `group:<name>`) with the generation applied and
the whole document, written in one transaction, so a restart (or a node that is offline)
serves with exactly what it last applied.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from edgefleet.node.control import base_models
from edgefleet.node.errors import disk_full_as
from edgefleet.plumbing.sqlite_db import open_database
from edgefleet.proto.payloads import ArtifactRef, DesiredState, RuleSpec, TemplateSpec, merged

MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS desired_sources (
        target_key TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        doc TEXT NOT NULL,
        applied_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS installed_artifacts (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        installed_at REAL NOT NULL,
        PRIMARY KEY (kind, name)
    )""",
    # the group assignment applied (node/control/group_assignment.py): groups added at run time
    """CREATE TABLE IF NOT EXISTS group_assignment (
        node_id TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        doc TEXT NOT NULL,
        applied_at REAL NOT NULL
    )""",
    *base_models.MIGRATIONS,  # the base model committed, pending, previous, refused (node/control/base_models.py)
]


def open_node_db(path: Path) -> sqlite_utils.Database:
    """The node's database: WAL, synchronous FULL (survives power loss), its migrations."""
    return open_database(path, MIGRATIONS, "FULL")


class DesiredStateStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self.path = Path(db.conn.execute("PRAGMA database_list").fetchone()[2] or ".")

    def generation(self, key: str) -> int:
        row = self.db.execute("SELECT generation FROM desired_sources WHERE target_key = ?", [key]).fetchone()
        return int(row[0]) if row else 0

    def save(self, doc: DesiredState) -> None:
        """Record an applied document; StorageFull (nothing changed) when the disk has no room."""
        with disk_full_as("desired-state store", self.path), self.db.conn:
            self.db.execute(
                "INSERT INTO desired_sources (target_key, generation, doc, applied_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(target_key) DO UPDATE SET generation=excluded.generation, doc=excluded.doc, "
                "applied_at=excluded.applied_at",
                [doc.target.key, doc.generation, doc.model_dump_json(), time.time()],
            )

    def doc(self, key: str) -> DesiredState | None:
        row = self.db.execute("SELECT doc FROM desired_sources WHERE target_key = ?", [key]).fetchone()
        return DesiredState.model_validate(json.loads(row[0])) if row else None

    def docs(self) -> dict[str, DesiredState]:
        rows = self.db.execute("SELECT target_key, doc FROM desired_sources").fetchall()
        return {key: DesiredState.model_validate(json.loads(doc)) for key, doc in rows}


@dataclass(frozen=True)
class InstalledArtifact:
    kind: str
    name: str
    version: str
    sha256: str
    path: Path
    size: int


class InstalledArtifacts:
    """Artifacts (adapters, later knowledge) this node installed from the site, to load again at start."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def all(self, kind: str) -> dict[str, InstalledArtifact]:
        rows = self.db.execute(
            "SELECT kind, name, version, sha256, path, size FROM installed_artifacts WHERE kind = ?", [kind]
        ).fetchall()
        return {r[1]: InstalledArtifact(r[0], r[1], r[2], r[3], Path(r[4]), r[5]) for r in rows}

    def record(self, a: InstalledArtifact) -> None:
        path = Path(self.db.conn.execute("PRAGMA database_list").fetchone()[2] or ".")
        with disk_full_as("installed-artifacts table", path), self.db.conn:
            self.db.execute(
                "INSERT INTO installed_artifacts (kind, name, version, sha256, path, size, installed_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(kind, name) DO UPDATE SET version=excluded.version, "
                "sha256=excluded.sha256, path=excluded.path, size=excluded.size, installed_at=excluded.installed_at",
                [a.kind, a.name, a.version, a.sha256, str(a.path), a.size, time.time()],
            )

    def forget(self, kind: str, name: str) -> None:
        with self.db.conn:
            self.db.execute("DELETE FROM installed_artifacts WHERE kind = ? AND name = ?", [kind, name])


def same_document(a: DesiredState, b: DesiredState) -> bool:
    """The same desired state, whether or not (or by which key) either copy is signed."""
    unsigned = {"key_id", "signature"}
    return a.model_dump(mode="json", exclude=unsigned) == b.model_dump(mode="json", exclude=unsigned)


def effective_adapters(docs: dict[str, DesiredState], node_id: str, groups: list[str]) -> dict[str, ArtifactRef]:
    return merged(docs, node_id, groups, "adapters")


def effective_knowledge(docs: dict[str, DesiredState], node_id: str, groups: list[str]) -> dict[str, ArtifactRef]:
    return merged(docs, node_id, groups, "knowledge")


def effective_rules(
    docs: dict[str, DesiredState], node_id: str, groups: list[str]
) -> dict[str, tuple[RuleSpec, str | None]]:
    """Each rule with the group that shares its messages (None: the node's own rule, not shared)."""
    out: dict[str, tuple[RuleSpec, str | None]] = {}
    for g in groups:
        if f"group:{g}" in docs:
            out.update({n: (r, g) for n, r in docs[f"group:{g}"].rules.items()})
    if f"node:{node_id}" in docs:
        out.update({n: (r, None) for n, r in docs[f"node:{node_id}"].rules.items()})
    return out


def effective_templates(docs: dict[str, DesiredState], node_id: str, groups: list[str]) -> dict[str, TemplateSpec]:
    return merged(docs, node_id, groups, "templates")
