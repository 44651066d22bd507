"""Agent runs as nodes report them: the latest report per run, the approvals waiting, the decisions sent.

A node publishes an `AgentRunReport` (proto/agents.py) on `agents/runs/<node>` at every change of
a run; ingest (orchestrator/ingest.py, in its batches) hands each to `AgentRunIngest`, which keeps
the newest per (node, run) in the registry's database (table `agent_runs`, a migration of
orchestrator/registry.py). A node speaks only for itself: a report whose node id is not its
topic's is refused on the errors topic. A report older than the one kept (a QoS 1 redelivery) is
ignored.

The decisions operators send (`approve`, `deny`: orchestrator/agent_commands.py) are kept beside
the run. When a run that had one ends, its retained decision is cleared from the broker.

Bounded: a listing row is a summary computed when the report arrives (no steps); runs not heard
of for `RETENTION_S` are deleted, and past `MAX_RUNS` the oldest go first, checked every
`PRUNE_EVERY` new runs (the retained decision of a pruned run that never ended is cleared too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.orchestrator.desired_edits import PublishRetained
from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.orchestrator.registry import Registry
from edgefleet.proto.agent_runs import AgentRunReport, ApprovalDecision
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.paging import MAX_PAGE_LIMIT, PAGE_BUDGET_BYTES, page_of
from edgefleet.proto.payloads import PayloadError, parse_payload
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.orchestrator.agents")

MAX_RUNS = 20_000  # runs kept; past it the least recently heard of go first
RETENTION_S = 30 * 86400  # a run not heard of for this long is deleted
PRUNE_EVERY = 200  # new runs between two prunes
ANSWER_CHARS = 300  # of the answer, in a listing row
ENDED = ("done", "failed", "stopped")


def summary(report: AgentRunReport) -> dict[str, Any]:
    """A run as `agent-runs` lists it: the report without its steps' bodies."""
    return {
        "node_id": report.node_id,
        "run_id": report.run_id,
        "rule": report.rule,
        "rule_version": report.rule_version,
        "trigger": report.trigger,
        "state": report.state,
        "reason": report.reason,
        "answer": report.answer[:ANSWER_CHARS],
        "step_count": len(report.steps),
        "pending": report.pending.model_dump(mode="json") if report.pending else None,
        "started": report.started,
        "ended": report.ended,
        "ts": report.ts,
    }


@dataclass(frozen=True)
class Recorded:
    stored: bool  # False: older than the report kept
    ended_now: bool  # this report ended a run not ended before
    decided: bool  # a decision was sent for the run


@dataclass(frozen=True)
class StoredRun:
    report: AgentRunReport
    decisions: dict[str, dict[str, Any]]  # step (as text) → the ApprovalDecision sent, as JSON

    def decision(self, step: int) -> dict[str, Any] | None:
        return self.decisions.get(str(step))

    @property
    def ended(self) -> bool:
        return self.report.state in ENDED or self.report.ended is not None


class AgentRunStore:
    """The `agent_runs` table of the registry's database; every call holds the registry's lock."""

    def __init__(
        self,
        registry: Registry,
        max_runs: int = MAX_RUNS,
        retention_s: float = RETENTION_S,
        on_forget: Callable[[str, str], object] | None = None,
    ) -> None:
        """`on_forget(node, run_id)`: a pruned run had a decision (its retained message can go)."""
        self.registry, self.max_runs, self.retention_s = registry, max_runs, retention_s
        self.on_forget = on_forget
        self.db = registry.db
        self._new = 0

    def record(self, report: AgentRunReport, now: float | None = None) -> Recorded:
        """Keep `report` unless the one kept for its run is newer."""
        with self.registry.write():
            row = self.db.execute(
                "SELECT state, ended, ts, decisions FROM agent_runs WHERE node_id = ? AND run_id = ?",
                [report.node_id, report.run_id],
            ).fetchone()
            decided = row is not None and row[3] != "{}"
            if row is not None and row[2] > report.ts:
                return Recorded(False, False, decided)
            was_ended = row is not None and (row[0] in ENDED or row[1] is not None)
            pending = report.pending
            self.db.execute(
                "INSERT INTO agent_runs (node_id, run_id, rule, state, started, ts, ended, pending_step, "
                "pending_expires, summary, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(node_id, run_id) DO UPDATE SET rule = excluded.rule, state = excluded.state, "
                "started = excluded.started, ts = excluded.ts, ended = excluded.ended, "
                "pending_step = excluded.pending_step, pending_expires = excluded.pending_expires, "
                "summary = excluded.summary, doc = excluded.doc",
                [
                    report.node_id,
                    report.run_id,
                    report.rule,
                    report.state,
                    report.started,
                    report.ts,
                    report.ended,
                    pending.step if pending and report.state == "waiting" else None,
                    pending.expires_at if pending and report.state == "waiting" else None,
                    json.dumps(summary(report)),
                    report.model_dump_json(),
                ],
            )
        if row is None:
            self._new += 1
            if self._new >= PRUNE_EVERY:
                self._new = 0
                self.prune(time.time() if now is None else now)
        ended = report.state in ENDED or report.ended is not None
        return Recorded(True, ended and not was_ended, decided)

    def record_decision(self, decision: ApprovalDecision) -> None:
        with self.registry.write():
            row = self.db.execute(
                "SELECT decisions FROM agent_runs WHERE node_id = ? AND run_id = ?",
                [decision.node_id, decision.run_id],
            ).fetchone()
            decisions = json.loads(row[0]) if row else {}
            decisions[str(decision.step)] = decision.model_dump(mode="json")
            self.db.execute(
                "UPDATE agent_runs SET decisions = ? WHERE node_id = ? AND run_id = ?",
                [json.dumps(decisions), decision.node_id, decision.run_id],
            )

    def prune(self, now: float) -> int:
        """Delete runs not heard of within the retention, then the oldest past `max_runs`; how many went."""
        old = "ts < ? OR rowid IN (SELECT rowid FROM agent_runs ORDER BY ts DESC LIMIT -1 OFFSET ?)"
        args = [now - self.retention_s, self.max_runs]
        with self.registry.write():
            decided = self.db.execute(
                f"SELECT node_id, run_id FROM agent_runs WHERE decisions != '{{}}' AND ({old})", args
            ).fetchall()
            gone = self.db.execute(f"DELETE FROM agent_runs WHERE {old}", args).rowcount
        if gone:
            log.info("agent runs pruned", extra={"deleted": gone, "kept_at_most": self.max_runs})
        for node, run_id in decided:
            if self.on_forget is not None:
                self.on_forget(node, run_id)
        return gone

    # -- reads ------------------------------------------------------------------------------------------
    def page(
        self,
        node: str = "",
        rule: str = "",
        state: str = "",
        offset: int = 0,
        limit: int | None = None,
        budget: int = PAGE_BUDGET_BYTES,
    ) -> dict[str, Any]:
        """One page of runs, newest first (by start): `runs` (summaries), `total`, `offset`, `next_offset`."""
        where, args = [], []
        for column, value in (("node_id", node), ("rule", rule), ("state", state)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self.registry.lock:
            total = int(self.db.execute(f"SELECT COUNT(*) FROM agent_runs{clause}", args).fetchone()[0])
            rows = []
            if limit != 0:
                rows = self.db.execute(
                    f"SELECT summary FROM agent_runs{clause} ORDER BY started DESC, run_id DESC LIMIT ? OFFSET ?",
                    [*args, MAX_PAGE_LIMIT if limit is None else limit, offset],
                ).fetchall()
        page = page_of([json.loads(r[0]) for r in rows], 0, limit, budget)
        stop = offset + len(page.items)
        return {
            "runs": page.items,
            "total": total,
            "offset": offset,
            "next_offset": stop if stop < total and limit != 0 else None,
        }

    def runs(self, run_id: str, node: str = "") -> list[StoredRun]:
        """The runs of this id (one per node that reported it; `node`: only that node's)."""
        sql = "SELECT doc, decisions FROM agent_runs WHERE run_id = ?" + (" AND node_id = ?" if node else "")
        with self.registry.lock:
            rows = self.db.execute(sql, [run_id, node] if node else [run_id]).fetchall()
        return [StoredRun(AgentRunReport.model_validate_json(d), json.loads(dec)) for d, dec in rows]

    def waiting(self, now: float) -> list[dict[str, Any]]:
        """The calls waiting for an operator now (not expired, not yet decided), soonest to expire first."""
        with self.registry.lock:
            rows = self.db.execute(
                "SELECT summary, decisions FROM agent_runs WHERE state = 'waiting' AND pending_step IS NOT NULL "
                "AND pending_expires > ? ORDER BY pending_expires, run_id",
                [now],
            ).fetchall()
        out = []
        for text, decisions in rows:
            s = json.loads(text)
            p = s["pending"]
            if str(p["step"]) in json.loads(decisions):
                continue  # answered; the node has not reported it took the answer yet
            out.append({"node_id": s["node_id"], "rule": s["rule"], "rule_version": s["rule_version"], **p})
        return out


class AgentRunIngest:
    """`(topic, payload)` of `agents/runs/<node>` → the store; clears a retained decision once its run ended."""

    def __init__(
        self, topics: Topics, store: AgentRunStore, errors: ErrorReporter, publish_retained: PublishRetained | None
    ) -> None:
        self.topics, self.store, self.errors, self.publish_retained = topics, store, errors, publish_retained

    def node_of(self, topic: str) -> str | None:
        levels = self.topics.parse(topic)
        if levels and len(levels) == 3 and levels[:2] == ("agents", "runs"):
            return levels[2]
        return None

    def __call__(self, topic: str, payload: bytes) -> None:
        node = self.node_of(topic)
        if node is None or not payload:
            return
        try:
            report = parse_payload(AgentRunReport, payload)
        except PayloadError as e:
            self.errors.report(topic, ErrorCode.INVALID_PAYLOAD, str(e))
            return
        if report.node_id != node:
            self.errors.report(
                topic,
                ErrorCode.WRONG_NODE,
                f"agent run report of {brief(report.node_id)} on the topic of {brief(node)}",
            )
            return
        rec = self.store.record(report)
        if not rec.stored:
            return
        log.info(
            "agent run",
            extra={"node": node, "run_id": report.run_id, "rule": report.rule, "state": report.state},
        )
        answered = any(s.verdict in ("approved", "denied") for s in report.steps)
        if rec.ended_now and (rec.decided or answered) and self.publish_retained is not None:
            self.publish_retained(self.topics.agent_decisions(node, report.run_id), b"")
            log.info("retained decision cleared: the run ended", extra={"node": node, "run_id": report.run_id})
