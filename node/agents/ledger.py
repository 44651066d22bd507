"""The agent ledger: every run, step, effect, approval and tool call of a node's agents, in one SQLite file.

Why it exists: a run must survive the node. Its conversation so far and the tool calls the model
asked for that are not handled yet (`pending`, each with its step number fixed when the model made
it) are written after every step, so a restarted node resumes a `running` or `waiting` run where it
was. An `act` call's effect is written (`pending`, keyed `<run_id>:<step>`) BEFORE it is
published and marked `done` after the broker's PUBACK: a node killed in between publishes it once
more at start, with the same idempotency key in the payload; a run that reaches the same step again
finds the effect there and does not publish a second time.

Approvals are `pending` → `approved` | `denied` | `expired`, each decided once. `calls` holds the
tool calls that ran, for the policy's per-hour counters (rows older than two hours are pruned).
`latest` holds the last message of each topic a read tool follows, so `sensor_latest` answers
after a restart too. Every method is one transaction under one lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgefleet.node.agents.policy import Counters, Decision
from edgefleet.node.errors import disk_full_as
from edgefleet.plumbing.sqlite_db import open_database
from edgefleet.proto.agent_runs import AgentStep, RunState

ApprovalState = Literal["pending", "approved", "denied", "expired"]
CALLS_KEPT_S = 2 * 3600.0
HOUR_S = 3600.0

MIGRATIONS: list[str | list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            rule_version TEXT NOT NULL,
            trigger TEXT NOT NULL,
            source_key TEXT UNIQUE,
            state TEXT NOT NULL CHECK (state IN ('running', 'waiting', 'done', 'failed', 'stopped')),
            reason TEXT NOT NULL DEFAULT '',
            answer TEXT NOT NULL DEFAULT '',
            started REAL NOT NULL,
            ended REAL,
            spec TEXT NOT NULL,
            messages TEXT NOT NULL,
            pending TEXT NOT NULL DEFAULT '[]',
            turns INTEGER NOT NULL DEFAULT 0,
            tool_calls INTEGER NOT NULL DEFAULT 0,
            next_step INTEGER NOT NULL DEFAULT 0,
            elapsed_s REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX runs_state ON runs (state)",
        """CREATE TABLE steps (
            run_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            step TEXT NOT NULL,
            PRIMARY KEY (run_id, idx)
        )""",
        """CREATE TABLE effects (
            key TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            tool TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
            created REAL NOT NULL,
            done_at REAL
        )""",
        "CREATE INDEX effects_state ON effects (state)",
        """CREATE TABLE approvals (
            run_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            tool TEXT NOT NULL,
            arguments TEXT NOT NULL,
            why TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
            operator TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            requested REAL NOT NULL,
            expires_at REAL NOT NULL,
            decided REAL,
            PRIMARY KEY (run_id, step)
        )""",
        "CREATE INDEX approvals_state ON approvals (state, expires_at)",
        """CREATE TABLE calls (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            rule TEXT NOT NULL,
            tool TEXT NOT NULL
        )""",
        "CREATE INDEX calls_ts ON calls (ts)",
        """CREATE TABLE latest (
            topic TEXT PRIMARY KEY,
            payload BLOB NOT NULL,
            received REAL NOT NULL
        )""",
    ]
]


@dataclass
class RunRow:
    """One run as the ledger keeps it. `spec` is what the run started with (rule and tools, JSON),
    `messages` the conversation so far, `pending` the calls not handled yet ({step, id, name, arguments})."""

    id: str
    rule: str
    rule_version: str
    trigger: str
    state: RunState
    started: float
    spec: dict[str, Any]
    messages: list[dict[str, Any]]
    pending: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    answer: str = ""
    ended: float | None = None
    turns: int = 0
    tool_calls: int = 0
    next_step: int = 0
    elapsed_s: float = 0.0

    def take_step(self) -> int:
        n = self.next_step
        self.next_step += 1
        return n


@dataclass(frozen=True)
class Effect:
    key: str
    run_id: str
    step: int
    tool: str
    topic: str
    payload: bytes
    state: Literal["pending", "done"]


@dataclass(frozen=True)
class Approval:
    run_id: str
    step: int
    tool: str
    arguments: str
    why: str
    state: ApprovalState
    operator: str
    reason: str
    expires_at: float


_RUN_COLUMNS = (
    "id, rule, rule_version, trigger, state, started, spec, messages, pending, reason, answer, ended, "
    "turns, tool_calls, next_step, elapsed_s"
)


def _run(r: tuple[Any, ...]) -> RunRow:
    return RunRow(
        id=r[0],
        rule=r[1],
        rule_version=r[2],
        trigger=r[3],
        state=r[4],
        started=r[5],
        spec=json.loads(r[6]),
        messages=json.loads(r[7]),
        pending=json.loads(r[8]),
        reason=r[9],
        answer=r[10],
        ended=r[11],
        turns=r[12],
        tool_calls=r[13],
        next_step=r[14],
        elapsed_s=r[15],
    )


def effect_key(run_id: str, step: int) -> str:
    return f"{run_id}:{step}"


class AgentLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_database(path, MIGRATIONS, "FULL")
        self._conn: sqlite3.Connection = self._db.conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self) -> Any:
        return disk_full_as("agent ledger", self.path)

    # -- runs -------------------------------------------------------------------------------------
    def create_run(self, run: RunRow, source_key: str | None = None, step: AgentStep | None = None) -> bool:
        """Record a new run; False (nothing written) when `source_key` (the trigger message) started one already."""
        with self._lock, self._write(), self._conn:
            if source_key is not None:
                known = self._conn.execute("SELECT 1 FROM runs WHERE source_key = ?", [source_key]).fetchone()
                if known:
                    return False
            self._conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}, source_key) VALUES ({', '.join('?' * 17)})",
                [*self._run_values(run), source_key],
            )
            if step is not None:
                self._insert_steps(run.id, [step])
        return True

    @staticmethod
    def _run_values(run: RunRow) -> list[Any]:
        return [
            run.id,
            run.rule,
            run.rule_version,
            run.trigger,
            run.state,
            run.started,
            json.dumps(run.spec),
            json.dumps(run.messages),
            json.dumps(run.pending),
            run.reason,
            run.answer,
            run.ended,
            run.turns,
            run.tool_calls,
            run.next_step,
            run.elapsed_s,
        ]

    def _insert_steps(self, run_id: str, steps: Iterable[AgentStep]) -> None:
        self._conn.executemany(
            "INSERT OR REPLACE INTO steps (run_id, idx, step) VALUES (?, ?, ?)",
            [(run_id, s.index, s.model_dump_json()) for s in steps],
        )

    def save(self, run: RunRow, steps: Iterable[AgentStep] = (), ran: Iterable[str] = ()) -> None:
        """In one transaction: the run as it is now, its new steps, and the tools that just ran (counters)."""
        now = time.time()
        with self._lock, self._write(), self._conn:
            self._conn.execute(
                "UPDATE runs SET state = ?, pending = ?, messages = ?, reason = ?, answer = ?, ended = ?, turns = ?, "
                "tool_calls = ?, next_step = ?, elapsed_s = ? WHERE id = ?",
                [
                    run.state,
                    json.dumps(run.pending),
                    json.dumps(run.messages),
                    run.reason,
                    run.answer,
                    run.ended,
                    run.turns,
                    run.tool_calls,
                    run.next_step,
                    run.elapsed_s,
                    run.id,
                ],
            )
            self._insert_steps(run.id, steps)
            self._conn.executemany(
                "INSERT INTO calls (ts, rule, tool) VALUES (?, ?, ?)", [(now, run.rule, t) for t in ran]
            )
            self._conn.execute("DELETE FROM calls WHERE ts < ?", [now - CALLS_KEPT_S])

    def run(self, run_id: str) -> RunRow | None:
        with self._lock:
            r = self._conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", [run_id]).fetchone()
        return None if r is None else _run(r)

    def runs(self, states: Iterable[RunState]) -> list[RunRow]:
        """Runs in these states, oldest first."""
        wanted = list(states)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({', '.join('?' * len(wanted))}) ORDER BY started",
                wanted,
            ).fetchall()
        return [_run(r) for r in rows]

    def steps(self, run_id: str) -> list[AgentStep]:
        with self._lock:
            rows = self._conn.execute("SELECT step FROM steps WHERE run_id = ? ORDER BY idx", [run_id]).fetchall()
        return [AgentStep.model_validate_json(r[0]) for r in rows]

    # -- counters ---------------------------------------------------------------------------------
    def counters(self, rule: str, now: float | None = None) -> Counters:
        """Tool calls that ran in the last hour: per tool on this node, and per tool of `rule`."""
        since = (time.time() if now is None else now) - HOUR_S
        with self._lock:
            rows = self._conn.execute(
                "SELECT rule, tool, COUNT(*) FROM calls WHERE ts >= ? GROUP BY rule, tool", [since]
            ).fetchall()
        node: dict[str, int] = {}
        mine: dict[str, int] = {}
        for r, tool, n in rows:
            node[tool] = node.get(tool, 0) + n
            if r == rule:
                mine[tool] = n
        return Counters(node=node, rule=mine)

    # -- effects ----------------------------------------------------------------------------------
    def begin_effect(self, run_id: str, step: int, tool: str, topic: str, payload: bytes) -> Effect:
        """The effect of (run, step), written `pending` now unless it is known: then the known one."""
        key = effect_key(run_id, step)
        with self._lock, self._write(), self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO effects (key, run_id, step, tool, topic, payload, state, created) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                [key, run_id, step, tool, topic, payload, time.time()],
            )
            r = self._conn.execute(
                "SELECT key, run_id, step, tool, topic, payload, state FROM effects WHERE key = ?", [key]
            ).fetchone()
        return Effect(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6])

    def effect_done(self, key: str) -> None:
        with self._lock, self._write(), self._conn:
            self._conn.execute(
                "UPDATE effects SET state = 'done', done_at = ? WHERE key = ? AND state = 'pending'", [time.time(), key]
            )

    def effects(self, state: Literal["pending", "done"] | None = None) -> list[Effect]:
        sql = "SELECT key, run_id, step, tool, topic, payload, state FROM effects"
        with self._lock:
            rows = (
                self._conn.execute(sql + " WHERE state = ? ORDER BY created", [state])
                if state
                else self._conn.execute(sql + " ORDER BY created")
            ).fetchall()
        return [Effect(r[0], r[1], r[2], r[3], r[4], bytes(r[5]), r[6]) for r in rows]

    # -- approvals --------------------------------------------------------------------------------
    def request_approval(self, run: RunRow, step: int, tool: str, arguments: str, why: str, expires_at: float) -> None:
        """In one transaction: the approval request (kept if it exists) and the run, now waiting."""
        with self._lock, self._write(), self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO approvals (run_id, step, tool, arguments, why, state, requested, expires_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                [run.id, step, tool, arguments, why, time.time(), expires_at],
            )
            self._conn.execute("UPDATE runs SET state = 'waiting' WHERE id = ?", [run.id])
        run.state = "waiting"

    def approval(self, run_id: str, step: int) -> Approval | None:
        with self._lock:
            r = self._conn.execute(
                "SELECT run_id, step, tool, arguments, why, state, operator, reason, expires_at FROM approvals "
                "WHERE run_id = ? AND step = ?",
                [run_id, step],
            ).fetchone()
        return None if r is None else Approval(*r)

    def decide(self, run_id: str, step: int, decision: Decision, operator: str = "", reason: str = "") -> bool:
        """Settle a pending approval; False when there is none pending (unknown, or decided already)."""
        with self._lock, self._write(), self._conn:
            cur = self._conn.execute(
                "UPDATE approvals SET state = ?, operator = ?, reason = ?, decided = ? "
                "WHERE run_id = ? AND step = ? AND state = 'pending'",
                [decision, operator, reason, time.time(), run_id, step],
            )
            return cur.rowcount == 1

    def pending_approvals(self) -> list[Approval]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT run_id, step, tool, arguments, why, state, operator, reason, expires_at FROM approvals "
                "WHERE state = 'pending' ORDER BY expires_at"
            ).fetchall()
        return [Approval(*r) for r in rows]

    # -- the latest message of each followed topic ------------------------------------------------
    def put_latest(self, topic: str, payload: bytes, received: float) -> None:
        with self._lock, self._write(), self._conn:
            self._conn.execute(
                "INSERT INTO latest (topic, payload, received) VALUES (?, ?, ?) ON CONFLICT(topic) DO UPDATE "
                "SET payload = excluded.payload, received = excluded.received",
                [topic, payload, received],
            )

    def all_latest(self) -> dict[str, tuple[bytes, float]]:
        with self._lock:
            rows = self._conn.execute("SELECT topic, payload, received FROM latest").fetchall()
        return {r[0]: (bytes(r[1]), r[2]) for r in rows}
