"""The fleet registry: nodes, groups, desired vs reported, last seen, online/offline history.

SQLite through sqlite-utils, WAL. Everything in it can be rebuilt from the broker's retained
messages (node status, reported state, desired state), so a deleted file heals itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from edgefleet.proto.payloads import (
    ArtifactRef,
    DesiredState,
    NodeStatus,
    ReportedState,
    Telemetry,
    TemplateSpec,
    merged,
)
from edgefleet.plumbing.sqlite_db import open_database

MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL, last_seen REAL NOT NULL,
        profile TEXT, groups TEXT NOT NULL DEFAULT '[]', model TEXT, info TEXT)""",
    """CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY AUTOINCREMENT, node_id TEXT NOT NULL, state TEXT NOT NULL, ts REAL NOT NULL,
        reason TEXT)""",
    """CREATE TABLE IF NOT EXISTS desired (
        target_key TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, generation INTEGER NOT NULL,
        doc TEXT NOT NULL, updated REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS reported (node_id TEXT PRIMARY KEY, doc TEXT NOT NULL, ts REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS telemetry (node_id TEXT PRIMARY KEY, doc TEXT NOT NULL, ts REAL NOT NULL)""",
]


def open_registry(path: Path) -> sqlite_utils.Database:
    return open_database(path, MIGRATIONS, "NORMAL")


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    state: str
    since: float
    last_seen: float
    profile: str
    groups: list[str]
    model: str
    sync: str  # "in sync", "drifted", "unknown"
    drift: list[str]
    templates: dict[str, str]
    adapters: dict[str, str] = field(default_factory=dict)  # name → version loaded
    knowledge: dict[str, str] = field(default_factory=dict)  # collection → version installed
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)  # `<kind>/<name>` → progress
    outbox: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Registry:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    # -- writes (one transaction each) --------------------------------------------------------------
    def record_status(self, status: NodeStatus) -> None:
        now = time.time()
        row = self.db.execute("SELECT state FROM nodes WHERE node_id = ?", [status.node_id]).fetchone()
        info = status.info
        with self.db.conn:
            if row is None or row[0] != status.state:
                self.db.execute(
                    "INSERT INTO history (node_id, state, ts, reason) VALUES (?, ?, ?, ?)",
                    [status.node_id, status.state, status.ts, status.reason],
                )
            if row is None:
                self.db.execute(
                    "INSERT INTO nodes (node_id, state, since, last_seen) VALUES (?, ?, ?, ?)",
                    [status.node_id, status.state, status.ts, now],
                )
            elif row[0] != status.state:
                self.db.execute(
                    "UPDATE nodes SET state = ?, since = ?, last_seen = ? WHERE node_id = ?",
                    [status.state, status.ts, now, status.node_id],
                )
            else:
                self.db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", [now, status.node_id])
            if info is not None:
                self.db.execute(
                    "UPDATE nodes SET profile = ?, groups = ?, model = ?, info = ? WHERE node_id = ?",
                    [info.profile, json.dumps(info.groups), info.model.name, info.model_dump_json(), status.node_id],
                )

    def record_reported(self, rep: ReportedState) -> None:
        with self.db.conn:
            self.db.execute(
                "INSERT INTO reported (node_id, doc, ts) VALUES (?, ?, ?) ON CONFLICT(node_id) DO UPDATE "
                "SET doc = excluded.doc, ts = excluded.ts",
                [rep.node_id, rep.model_dump_json(), time.time()],
            )
            self.db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", [time.time(), rep.node_id])

    def record_telemetry(self, t: Telemetry) -> None:
        with self.db.conn:
            self.db.execute(
                "INSERT INTO telemetry (node_id, doc, ts) VALUES (?, ?, ?) ON CONFLICT(node_id) DO UPDATE "
                "SET doc = excluded.doc, ts = excluded.ts",
                [t.node_id, t.model_dump_json(), time.time()],
            )
            self.db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", [time.time(), t.node_id])

    def record_desired(self, doc: DesiredState) -> bool:
        """Keep the newest generation per target; False when `doc` is older than what is stored."""
        with self.db.conn:
            row = self.db.execute("SELECT generation FROM desired WHERE target_key = ?", [doc.target.key]).fetchone()
            if row is not None and row[0] > doc.generation:
                return False
            self.db.execute(
                "INSERT INTO desired (target_key, kind, name, generation, doc, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(target_key) DO UPDATE SET generation = excluded.generation, doc = excluded.doc, "
                "updated = excluded.updated",
                [doc.target.key, doc.target.kind, doc.target.name, doc.generation, doc.model_dump_json(), time.time()],
            )
        return True

    # -- reads ------------------------------------------------------------------------------------------
    def desired(self, key: str) -> DesiredState | None:
        row = self.db.execute("SELECT doc FROM desired WHERE target_key = ?", [key]).fetchone()
        return DesiredState.model_validate_json(row[0]) if row else None

    def all_desired(self) -> dict[str, DesiredState]:
        rows = self.db.execute("SELECT target_key, doc FROM desired").fetchall()
        return {k: DesiredState.model_validate_json(d) for k, d in rows}

    def node_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT node_id FROM nodes").fetchall()}

    def history(self, node_id: str) -> list[tuple[str, float]]:
        rows = self.db.execute("SELECT state, ts FROM history WHERE node_id = ? ORDER BY id", [node_id]).fetchall()
        return [(r[0], r[1]) for r in rows]

    def rows(self) -> list[NodeRow]:
        desired = self.all_desired()
        reported = {
            r[0]: ReportedState.model_validate_json(r[1])
            for r in self.db.execute("SELECT node_id, doc FROM reported").fetchall()
        }
        outbox = {
            r[0]: Telemetry.model_validate_json(r[1]).outbox_depth
            for r in self.db.execute("SELECT node_id, doc FROM telemetry").fetchall()
        }
        out = []
        for node_id, state, since, last_seen, profile, groups_json, model in self.db.execute(
            "SELECT node_id, state, since, last_seen, profile, groups, model FROM nodes ORDER BY node_id"
        ).fetchall():
            groups = json.loads(groups_json or "[]")
            rep = reported.get(node_id)
            drift = _drift(node_id, groups, desired, rep)
            sync = "unknown" if rep is None else ("in sync" if not drift else "drifted")
            out.append(
                NodeRow(
                    node_id,
                    state,
                    since,
                    last_seen,
                    profile or "",
                    groups,
                    model or "",
                    sync,
                    drift,
                    rep.templates if rep else {},
                    rep.adapters if rep else {},
                    rep.knowledge if rep else {},
                    {k: t.model_dump() for k, t in rep.transfers.items()} if rep else {},
                    outbox.get(node_id),
                )
            )
        return out


def _expected(
    node_id: str, groups: list[str], desired: dict[str, DesiredState]
) -> tuple[dict[str, TemplateSpec], dict[str, ArtifactRef], dict[str, int]]:
    keys = [*(f"group:{g}" for g in groups), f"node:{node_id}"]
    generations = {k: desired[k].generation for k in keys if k in desired}
    return merged(desired, node_id, groups, "templates"), merged(desired, node_id, groups, "adapters"), generations


def expected_knowledge(node_id: str, groups: list[str], desired: dict[str, DesiredState]) -> dict[str, ArtifactRef]:
    return merged(desired, node_id, groups, "knowledge")


def expected_adapters(node_id: str, groups: list[str], desired: dict[str, DesiredState]) -> dict[str, ArtifactRef]:
    """The adapters a node should hold: its groups' (in order), then its own, which win on a name clash."""
    return _expected(node_id, groups, desired)[1]


def _drift(node_id: str, groups: list[str], desired: dict[str, DesiredState], rep: ReportedState | None) -> list[str]:
    if rep is None:
        return ["no reported state yet"]
    want, want_adapters, gens = _expected(node_id, groups, desired)
    reasons = []
    for key, gen in gens.items():
        have = rep.generations.get(key, 0)
        if have < gen:
            reasons.append(f"{key} at generation {have}, desired {gen}")
    for name, spec in want.items():
        have_v = rep.templates.get(name)
        if have_v is None:
            reasons.append(f"template {name} missing")
        elif have_v != spec.version:
            reasons.append(f"template {name} at {have_v}, desired {spec.version}")
    for name in rep.templates:
        if name not in want:
            reasons.append(f"template {name} not desired")
    for name, ref in want_adapters.items():
        have_v = rep.adapters.get(name)
        if have_v != ref.version:
            t = rep.transfers.get(f"adapter/{name}")
            where = f"{t.state} {t.have}/{t.total}" if t else (f"at {have_v}" if have_v else "missing")
            reasons.append(f"adapter {name} {where}, desired {ref.version}")
    for name in rep.adapters:
        if name not in want_adapters:
            reasons.append(f"adapter {name} not desired")
    for name, ref in merged(desired, node_id, groups, "knowledge").items():
        if rep.knowledge.get(name) != ref.version:
            t = rep.transfers.get(f"knowledge/{name}")
            where = (
                f"{t.state} {t.have}/{t.total}"
                if t
                else (f"at {rep.knowledge[name]}" if name in rep.knowledge else "missing")
            )
            reasons.append(f"knowledge {name} {where}, desired {ref.version}")
    reasons.extend(f"error: {e}" for e in rep.errors)
    return reasons
