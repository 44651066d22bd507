"""The fleet registry: nodes, groups, desired vs reported, last seen, online/offline history.

SQLite through sqlite-utils, WAL. Everything in it can be rebuilt from the broker's retained
messages (node status, reported state, desired state), so a deleted file heals itself.

One connection, used by the ingest thread and the command worker (desired state): every method
holds the registry's lock, so a transaction of one thread never takes in a statement of another.
Ingest writes a whole batch of messages in one transaction (`batch`); each write inside it is a
savepoint, so one that fails is undone alone and the rest of the batch still commits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils
from pydantic import ValidationError

from edgefleet.orchestrator.drift import drift_reasons
from edgefleet.plumbing.sqlite_db import Migration, open_database
from edgefleet.proto.paging import PAGE_BUDGET_BYTES, NodeFilter, node_page
from edgefleet.proto.payloads import (
    MAX_GENERATION,
    ArtifactRef,
    DesiredState,
    GroupAssignment,
    NodeInfoPayload,
    NodeStatus,
    ReportedState,
    Telemetry,
    effective_model,
)

log = logging.getLogger("edgefleet.orchestrator.registry")

MIGRATIONS: list[Migration] = [
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
    # groups assigned at run time (`assign-groups`): the newest signed assignment per node
    """CREATE TABLE IF NOT EXISTS assignments (
        node_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, doc TEXT NOT NULL, updated REAL NOT NULL)""",
    # agent runs: the latest report per run and the decisions sent for it (orchestrator/agent_runs.py)
    [
        """CREATE TABLE IF NOT EXISTS agent_runs (
            node_id TEXT NOT NULL, run_id TEXT NOT NULL, rule TEXT NOT NULL, state TEXT NOT NULL,
            started REAL NOT NULL, ts REAL NOT NULL, ended REAL, pending_step INTEGER, pending_expires REAL,
            summary TEXT NOT NULL, doc TEXT NOT NULL, decisions TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (node_id, run_id))""",
        "CREATE INDEX IF NOT EXISTS agent_runs_by_start ON agent_runs (started, run_id)",
        "CREATE INDEX IF NOT EXISTS agent_runs_by_run ON agent_runs (run_id)",
        "CREATE INDEX IF NOT EXISTS agent_runs_by_ts ON agent_runs (ts)",
    ],
    # per-group policies: a group that requires rollouts (orchestrator/group_policies.py)
    """CREATE TABLE IF NOT EXISTS group_policies (
        grp TEXT PRIMARY KEY, require_rollouts INTEGER NOT NULL, operator TEXT NOT NULL, updated REAL NOT NULL)""",
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
    generations: dict[str, int] = field(default_factory=dict)  # target key → generation the node applied
    address: str = ""  # gRPC host:port the node advertises
    assigned_groups: list[str] = field(default_factory=list)  # what `assign-groups` asked for (`groups`: applied)
    insecure: bool = False  # the node said it runs with EDGEFLEET_INSECURE (its status info)
    reported_model: str = ""  # the model it reports serving (ReportedState.model: `<name>@<version>` or catalog name)
    desired_model: str = ""  # `<name>@<version>` its desired state names (DesiredState.model); empty: its own

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class NodeRecord:
    """Everything the registry keeps of one node, parsed: what the fleet view is rebuilt from at start."""

    node_id: str
    state: str
    reason: str  # of the latest state change
    since: float
    last_seen: float
    info: NodeInfoPayload | None
    reported: ReportedState | None
    telemetry: Telemetry | None


def _model_label(ref: ArtifactRef | None) -> str:
    return f"{ref.name}@{ref.version}" if ref is not None else ""


def _desired_doc(key: str, text: str) -> DesiredState | None:
    """A stored desired state, or None (logged) for one the contract no longer accepts (a generation
    above its bound, stored before there was one): the next push replaces it."""
    try:
        return DesiredState.model_validate_json(text)
    except ValidationError as e:
        log.warning("stored desired state no longer valid; ignored", extra={"target": key, "reason": str(e)[:300]})
        return None


class Registry:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        self._lock = threading.RLock()
        self._in_batch = False  # only read and written under the lock, by the thread holding it

    # -- writes (one transaction each, or one savepoint each inside a batch) --------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction around many writes (ingest's batches), committed at the end; other
        threads wait for the lock meanwhile. Nested: part of the batch already open."""
        with self._lock:
            if self._in_batch:
                yield
                return
            self._in_batch = True
            try:
                with self.db.conn:  # commits on the way out, rolls back on an exception
                    self.db.execute("BEGIN")
                    yield
            finally:
                self._in_batch = False

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write: its own transaction, or a savepoint of the open batch (undone alone if it raises)."""
        with self._lock:
            if not self._in_batch:
                with self.db.conn:
                    yield
                return
            self.db.execute("SAVEPOINT one_write")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK TO one_write")
                self.db.execute("RELEASE one_write")
                raise
            self.db.execute("RELEASE one_write")

    def write(self) -> AbstractContextManager[None]:
        """One write to a table another part keeps in this database (orchestrator/agent_runs.py), as the
        registry's own: a transaction, or a savepoint of the ingest batch open on this thread."""
        return self._write()

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def record_status(self, status: NodeStatus) -> None:
        now = time.time()
        info = status.info
        with self._write():
            row = self.db.execute("SELECT state FROM nodes WHERE node_id = ?", [status.node_id]).fetchone()
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
        with self._write():
            self.db.execute(
                "INSERT INTO reported (node_id, doc, ts) VALUES (?, ?, ?) ON CONFLICT(node_id) DO UPDATE "
                "SET doc = excluded.doc, ts = excluded.ts",
                [rep.node_id, rep.model_dump_json(), time.time()],
            )
            self.db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", [time.time(), rep.node_id])

    def record_telemetry(self, t: Telemetry) -> None:
        with self._write():
            self.db.execute(
                "INSERT INTO telemetry (node_id, doc, ts) VALUES (?, ?, ?) ON CONFLICT(node_id) DO UPDATE "
                "SET doc = excluded.doc, ts = excluded.ts",
                [t.node_id, t.model_dump_json(), time.time()],
            )
            self.db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", [time.time(), t.node_id])

    def record_desired(self, doc: DesiredState) -> bool:
        """Keep the newest generation per target; False when `doc` is older than what is stored."""
        with self._write():
            row = self.db.execute("SELECT generation FROM desired WHERE target_key = ?", [doc.target.key]).fetchone()
            if row is not None and MAX_GENERATION >= row[0] > doc.generation:  # above the bound: from before it
                return False
            self.db.execute(
                "INSERT INTO desired (target_key, kind, name, generation, doc, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(target_key) DO UPDATE SET generation = excluded.generation, doc = excluded.doc, "
                "updated = excluded.updated",
                [doc.target.key, doc.target.kind, doc.target.name, doc.generation, doc.model_dump_json(), time.time()],
            )
        return True

    def record_assignment(self, doc: GroupAssignment) -> bool:
        """Keep the newest assignment per node; False when `doc` is older than the one stored."""
        with self._write():
            row = self.db.execute("SELECT generation FROM assignments WHERE node_id = ?", [doc.node_id]).fetchone()
            if row is not None and row[0] > doc.generation:
                return False
            self.db.execute(
                "INSERT INTO assignments (node_id, generation, doc, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET generation = excluded.generation, doc = excluded.doc, "
                "updated = excluded.updated",
                [doc.node_id, doc.generation, doc.model_dump_json(), time.time()],
            )
        return True

    # -- reads ------------------------------------------------------------------------------------------
    def assignment(self, node_id: str) -> GroupAssignment | None:
        with self._lock:
            row = self.db.execute("SELECT doc FROM assignments WHERE node_id = ?", [node_id]).fetchone()
        return GroupAssignment.model_validate_json(row[0]) if row else None

    def assignments(self) -> dict[str, GroupAssignment]:
        with self._lock:
            rows = self.db.execute("SELECT node_id, doc FROM assignments").fetchall()
        return {n: GroupAssignment.model_validate_json(d) for n, d in rows}

    def reported_generation(self, key: str) -> int:
        """The newest generation of target `key` any node reports having applied (0: none).

        A generation above the contract's bound (a node that applied garbage before it was bounded)
        is left out: the next generation could not be published after it.
        """
        with self._lock:
            docs = list(self._docs("reported").values())
        best = 0
        for doc in docs:
            gen = ReportedState.model_validate_json(doc).generations.get(key, 0)
            if best < gen <= MAX_GENERATION:
                best = gen
        return best

    def groups(self) -> set[str]:
        """Every group some registered node is in, or is assigned to."""
        with self._lock:
            rows = self.db.execute("SELECT groups FROM nodes").fetchall()
        assigned = {g for a in self.assignments().values() for g in a.groups}
        return {g for (groups_json,) in rows for g in json.loads(groups_json or "[]")} | assigned

    def desired(self, key: str) -> DesiredState | None:
        with self._lock:
            row = self.db.execute("SELECT doc FROM desired WHERE target_key = ?", [key]).fetchone()
        return _desired_doc(key, row[0]) if row else None

    def all_desired(self) -> dict[str, DesiredState]:
        with self._lock:
            rows = self.db.execute("SELECT target_key, doc FROM desired").fetchall()
        docs = {k: _desired_doc(k, d) for k, d in rows}
        return {k: d for k, d in docs.items() if d is not None}

    def node_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.db.execute("SELECT node_id FROM nodes").fetchall()}

    def history(self, node_id: str) -> list[tuple[str, float]]:
        with self._lock:
            rows = self.db.execute("SELECT state, ts FROM history WHERE node_id = ? ORDER BY id", [node_id]).fetchall()
        return [(r[0], r[1]) for r in rows]

    def _docs(self, table: str) -> dict[str, str]:
        return dict(self.db.execute(f"SELECT node_id, doc FROM {table}").fetchall())

    def node_records(self) -> list[NodeRecord]:
        with self._lock:
            reported, telemetry = self._docs("reported"), self._docs("telemetry")
            reasons = dict(
                self.db.execute(
                    "SELECT node_id, reason FROM history WHERE id IN (SELECT MAX(id) FROM history GROUP BY node_id)"
                ).fetchall()
            )
            nodes = self.db.execute(
                "SELECT node_id, state, since, last_seen, info FROM nodes ORDER BY node_id"
            ).fetchall()
        return [
            NodeRecord(
                node_id,
                state,
                reasons.get(node_id) or "",
                since,
                last_seen,
                NodeInfoPayload.model_validate_json(info) if info else None,
                ReportedState.model_validate_json(reported[node_id]) if node_id in reported else None,
                Telemetry.model_validate_json(telemetry[node_id]) if node_id in telemetry else None,
            )
            for node_id, state, since, last_seen, info in nodes
        ]

    def rows(self) -> list[NodeRow]:
        desired = self.all_desired()
        assigned = self.assignments()
        with self._lock:
            reported = {k: ReportedState.model_validate_json(d) for k, d in self._docs("reported").items()}
            outbox = {k: Telemetry.model_validate_json(d).outbox_depth for k, d in self._docs("telemetry").items()}
            nodes = self.db.execute(
                "SELECT node_id, state, since, last_seen, profile, groups, model, info FROM nodes ORDER BY node_id"
            ).fetchall()
        out = []
        for node_id, state, since, last_seen, profile, groups_json, model, info in nodes:
            groups = json.loads(groups_json or "[]")
            rep = reported.get(node_id)
            node_info = NodeInfoPayload.model_validate_json(info) if info else None
            drift = drift_reasons(node_id, groups, desired, rep)
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
                    dict(rep.generations) if rep else {},
                    node_info.grpc_address if node_info else "",
                    list(assigned[node_id].groups) if node_id in assigned else [],
                    node_info.insecure if node_info else False,
                    rep.model if rep else "",
                    _model_label(effective_model(desired, node_id, groups)),
                )
            )
        return out

    def node_page(
        self, flt: NodeFilter, offset: int = 0, limit: int | None = None, budget: int = PAGE_BUDGET_BYTES
    ) -> dict[str, Any]:
        """One page of the nodes `flt` matches, ordered by id, with the site's summary: the data of a
        `status` answer (proto/paging.py `node_page`)."""
        return node_page([r.as_dict() for r in self.rows()], flt, offset, limit, budget)
