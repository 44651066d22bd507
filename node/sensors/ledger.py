"""The sensor ledger: every accepted message and every unpublished answer, in one SQLite file.

Why it exists: a message is acknowledged to the broker only after its inbox row is committed
(WAL, synchronous FULL), and an answer leaves the outbox only after the broker's PUBACK, so
neither a crash nor a power cut loses one. The message's inbox row turns `done` in the same
transaction that writes its answer to the outbox, so no message is answered twice; `done` rows
are kept (without their payload, up to `done_keep`, oldest pruned first) to recognize redeliveries.

States of an inbox row: `pending` (accepted, waiting) → `running` (claimed for the engine) →
`done` (answered). Rows left `running` by a crash go back to `pending` when the ledger opens.
`attempts` counts the claims that were real tries (a claim given back unanswered by a busy engine
or a stopping node is not one); the answerer parks a message whose tries ran out.
Messages are keyed by (rule, topic, id): one message matching two rules is two pieces of work,
and ids need only be unique per topic.

Publishing is at least once: an answer whose PUBACK was lost with a crash is published again, with
the same `source_id`, which is how a consumer drops it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgefleet.node.errors import disk_full_as
from edgefleet.plumbing.sqlite_db import open_database

Accept = Literal["new", "duplicate", "full"]

MIGRATIONS: list[str] = [
    """CREATE TABLE inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        rule TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        received_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
        attempts INTEGER NOT NULL DEFAULT 0,
        done_at REAL,
        UNIQUE (rule, topic, id)
    )""",
    "CREATE INDEX inbox_state_seq ON inbox (state, seq)",
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        source_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at REAL NOT NULL
    )""",
]


@dataclass(frozen=True)
class InboxRow:
    seq: int
    id: str
    rule: str
    topic: str
    payload: bytes
    received_at: float
    attempts: int  # claims so far, this one included: a message that keeps crashing the node shows here


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    source_id: str
    topic: str
    payload: bytes
    created_at: float


class SensorLedger:
    """Inbox and outbox of one node. Every method is one transaction under one lock, so the MQTT
    network thread, the engine's callback thread and the publisher may share it.

    `inbox_limit` bounds unanswered rows (pending + running): beyond it `accept` answers `full` and
    the caller leaves the message unacknowledged, so the broker keeps it. `outbox_limit` is soft:
    while the outbox is at it, `claim_pending` hands out no work, and answers already in the
    engine are still written.
    """

    def __init__(
        self, path: Path, inbox_limit: int = 10000, outbox_limit: int = 10000, done_keep: int = 100_000
    ) -> None:
        if inbox_limit < 1 or outbox_limit < 1 or done_keep < 0:
            raise ValueError("inbox_limit and outbox_limit must be at least 1, done_keep at least 0")
        self.path = path
        self.inbox_limit = inbox_limit
        self.outbox_limit = outbox_limit
        self.done_keep = done_keep
        self._lock = threading.Lock()
        self._db = open_database(path, MIGRATIONS, "FULL")
        self._conn: sqlite3.Connection = self._db.conn
        with self._lock, self._conn:
            self._conn.execute("UPDATE inbox SET state = 'pending' WHERE state = 'running'")
            self._open = self._count("SELECT COUNT(*) FROM inbox WHERE state != 'done'")
            self._done = self._count("SELECT COUNT(*) FROM inbox WHERE state = 'done'")
            self._outbox = self._count("SELECT COUNT(*) FROM outbox")
            self._prune_done()

    def _count(self, sql: str) -> int:
        return int(self._conn.execute(sql).fetchone()[0])

    def _prune_done(self) -> None:
        excess = self._done - self.done_keep
        if excess > 0:
            self._conn.execute(
                "DELETE FROM inbox WHERE seq IN (SELECT seq FROM inbox WHERE state = 'done' ORDER BY seq LIMIT ?)",
                [excess],
            )
            self._done -= excess

    # -- inbox ------------------------------------------------------------------------------------
    def accept(self, msg_id: str, rule: str, topic: str, payload: bytes, received_at: float | None = None) -> Accept:
        """Record a message. `new`: committed durably, ack it now. `duplicate`: seen before (waiting,
        running or answered), ack and drop it. `full`: not recorded, do not ack it.
        """
        when = time.time() if received_at is None else received_at
        with self._lock:
            known = self._conn.execute(
                "SELECT 1 FROM inbox WHERE rule = ? AND topic = ? AND id = ?", [rule, topic, msg_id]
            ).fetchone()
            if known:
                return "duplicate"
            if self._open >= self.inbox_limit:
                return "full"
            with disk_full_as("sensor ledger", self.path), self._conn:
                self._conn.execute(
                    "INSERT INTO inbox (id, rule, topic, payload, received_at, state) "
                    "VALUES (?, ?, ?, ?, ?, 'pending')",
                    [msg_id, rule, topic, bytes(payload), when],
                )
            self._open += 1
            return "new"

    def claim_pending(self, limit: int) -> list[InboxRow]:
        """Up to `limit` pending rows, oldest first, now `running` with one more attempt; none while
        the outbox is full.
        """
        with self._lock:
            if limit < 1 or self._outbox >= self.outbox_limit:
                return []
            with disk_full_as("sensor ledger", self.path), self._conn:
                rows = self._conn.execute(
                    "SELECT seq, id, rule, topic, payload, received_at, attempts FROM inbox "
                    "WHERE state = 'pending' ORDER BY seq LIMIT ?",
                    [limit],
                ).fetchall()
                self._conn.executemany(
                    "UPDATE inbox SET state = 'running', attempts = attempts + 1 WHERE seq = ?",
                    [(r[0],) for r in rows],
                )
        return [InboxRow(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6] + 1) for r in rows]

    def release(self, seq: int, tried: bool = True) -> bool:
        """Give a claimed row back to be claimed again; False when it is not running. `tried`: the
        claim counts as an attempt (it failed); False when it was none (the engine refused it for
        now, the node is stopping).
        """
        uncount = 0 if tried else 1
        with self._lock, disk_full_as("sensor ledger", self.path), self._conn:
            cur = self._conn.execute(
                "UPDATE inbox SET state = 'pending', attempts = MAX(attempts - ?, 0) "
                "WHERE seq = ? AND state = 'running'",
                [uncount, seq],
            )
            return cur.rowcount == 1

    def attempts(self, msg_id: str, rule: str, topic: str) -> int | None:
        """How often the message was claimed for an answer (None when the ledger does not know it)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT attempts FROM inbox WHERE rule = ? AND topic = ? AND id = ?", [rule, topic, msg_id]
            ).fetchone()
        return None if row is None else int(row[0])

    def complete(self, seq: int, result_topic: str, result_payload: bytes, source_id: str | None = None) -> bool:
        """In one transaction: the inbox row turns `done` (its payload dropped) and the answer joins the
        outbox. False, and nothing written, when the row is already done or unknown: a second answer
        to the same message is never queued. `source_id` defaults to the row's message id.
        """
        now = time.time()
        with self._lock, disk_full_as("sensor ledger", self.path), self._conn:
            row = self._conn.execute("SELECT id FROM inbox WHERE seq = ? AND state != 'done'", [seq]).fetchone()
            if row is None:
                return False
            self._conn.execute("UPDATE inbox SET state = 'done', payload = x'', done_at = ? WHERE seq = ?", [now, seq])
            self._conn.execute(
                "INSERT INTO outbox (source_id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                [row[0] if source_id is None else source_id, result_topic, bytes(result_payload), now],
            )
            self._open -= 1
            self._done += 1
            self._outbox += 1
            self._prune_done()
            return True

    def state(self, msg_id: str, rule: str, topic: str) -> str | None:
        """`pending`, `running`, `done`, or None when the ledger does not know (or no longer knows) it."""
        with self._lock:
            row = self._conn.execute(
                "SELECT state FROM inbox WHERE rule = ? AND topic = ? AND id = ?", [rule, topic, msg_id]
            ).fetchone()
        return None if row is None else str(row[0])

    # -- outbox -----------------------------------------------------------------------------------
    def outbox_batch(self, limit: int) -> list[OutboxRow]:
        """The oldest `limit` unpublished answers, in the order they were written."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, source_id, topic, payload, created_at FROM outbox ORDER BY seq LIMIT ?", [limit]
            ).fetchall()
        return [OutboxRow(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def outbox_delete(self, seq: int) -> bool:
        """Forget a published answer (call on PUBACK); False when it was already gone."""
        with self._lock, disk_full_as("sensor ledger", self.path), self._conn:
            cur = self._conn.execute("DELETE FROM outbox WHERE seq = ?", [seq])
            if cur.rowcount == 1:
                self._outbox -= 1
                return True
            return False

    # -- levels -----------------------------------------------------------------------------------
    def depths(self) -> tuple[int, int]:
        """(unanswered inbox rows: pending + running, outbox rows)."""
        with self._lock:
            return self._open, self._outbox

    def outbox_full(self) -> bool:
        with self._lock:
            return self._outbox >= self.outbox_limit

    def close(self) -> None:
        with self._lock:
            self._conn.close()
