"""The node's record of applied desired state, in its SQLite database (sqlite-utils, WAL).

One row per desired-state source (`node:<id>`, `group:<name>`) with the generation applied and
the whole document, written in one transaction, so a restart (or a node that is offline)
serves with exactly what it last applied.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlite_utils

from edgefleet.proto.payloads import DesiredState, TemplateSpec
from edgefleet.proto.sqlite_db import open_database

MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS desired_sources (
        target_key TEXT PRIMARY KEY,
        generation INTEGER NOT NULL,
        doc TEXT NOT NULL,
        applied_at REAL NOT NULL
    )""",
]


def open_node_db(path: Path) -> sqlite_utils.Database:
    """The node's database: WAL, synchronous FULL (survives power loss), its migrations."""
    return open_database(path, MIGRATIONS, "FULL")


class DesiredStateStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def generation(self, key: str) -> int:
        row = self.db.execute("SELECT generation FROM desired_sources WHERE target_key = ?", [key]).fetchone()
        return int(row[0]) if row else 0

    def save(self, doc: DesiredState) -> None:
        with self.db.conn:
            self.db.execute(
                "INSERT INTO desired_sources (target_key, generation, doc, applied_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(target_key) DO UPDATE SET generation=excluded.generation, doc=excluded.doc, "
                "applied_at=excluded.applied_at",
                [doc.target.key, doc.generation, doc.model_dump_json(), time.time()],
            )

    def docs(self) -> dict[str, DesiredState]:
        rows = self.db.execute("SELECT target_key, doc FROM desired_sources").fetchall()
        return {key: DesiredState.model_validate(json.loads(doc)) for key, doc in rows}


def effective_templates(docs: dict[str, DesiredState], node_id: str, groups: list[str]) -> dict[str, TemplateSpec]:
    """Group templates (groups in the node's order), then the node's own, which win on a name clash."""
    out: dict[str, TemplateSpec] = {}
    for key in [*(f"group:{g}" for g in groups), f"node:{node_id}"]:
        if key in docs:
            out.update(docs[key].templates)
    return out
