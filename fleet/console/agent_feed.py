"""Agent runs and approvals as the console shows them: the orchestrator's word, with the nodes' newer one.

The orchestrator keeps every run and the approval queue (`agent-runs`, `agent-run`, `approvals`);
the console also subscribes to the nodes' run reports (`agents/runs/+`) and the orchestrator's
decisions (`agents/decisions/+/+`) itself, as it does for node status: a report the console has
seen is at least as new as what the orchestrator answered a moment ago, so it wins (`merge_runs`,
`merge_approvals`), and every message wakes the pages' streams (`changes`) at once.

MQTT handlers run on paho's network thread: they parse, store and bump, nothing more.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from edgefleet.fleet.console.live_fleet import Changes
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.agent_runs import AgentRunReport, ApprovalDecision
from edgefleet.proto.payloads import PayloadError, parse_payload
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.console.agents")

MAX_RUNS_KEPT = 500  # reports of the most recent runs the console remembers (the orchestrator keeps all)
RUN_FILTERS = ("node", "rule", "state")


def run_row(report: dict[str, Any]) -> dict[str, Any]:
    """A run as the list shows it (from a report, or a row the orchestrator answered): no step bodies."""
    steps = report.get("steps", 0)
    pending = report.get("pending")
    return {
        "node_id": str(report.get("node_id", "")),
        "run_id": str(report.get("run_id", "")),
        "rule": str(report.get("rule", "")),
        "rule_version": str(report.get("rule_version", "")),
        "trigger": str(report.get("trigger", "")),
        "state": str(report.get("state", "")),
        "reason": str(report.get("reason", "")),
        "answer": str(report.get("answer", ""))[:300],
        "steps": len(steps) if isinstance(steps, list) else int(report.get("step_count", steps) or 0),
        "pending": pending.get("step") if isinstance(pending, dict) else None,
        "started": float(report.get("started") or 0.0),
        "ended": report.get("ended"),
        "ts": float(report.get("ts") or 0.0),
    }


def matches(row: dict[str, Any], query: dict[str, Any]) -> bool:
    return all(not query.get(f) or row.get("node_id" if f == "node" else f) == query[f] for f in RUN_FILTERS)


def merge_runs(
    page: dict[str, Any], seen: dict[str, dict[str, Any]], query: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """The orchestrator's page of runs (`runs`, `total`) with what the console saw since: a newer report of
    a run on the page replaces its row (and drops it when it no longer matches the filters); on the first
    page, runs the orchestrator did not list yet are added, newest first. (rows, total)."""
    rows, total = [], int(page.get("total", 0))
    listed = set()
    for r in page.get("runs", []):
        row = run_row(r)
        listed.add(row["run_id"])
        mine = seen.get(row["run_id"])
        if mine is not None and mine["ts"] >= row["ts"]:
            row = mine
            if not matches(row, query):
                total -= 1
                continue
        rows.append(row)
    if int(query.get("offset", 0)) == 0:
        limit = int(query.get("limit") or 25)
        oldest = min((r["started"] for r in rows), default=0.0) if len(rows) >= limit else 0.0
        new = [r for rid, r in seen.items() if rid not in listed and matches(r, query) and r["started"] >= oldest]
        total += len(new)
        rows = sorted(rows + new, key=lambda r: (r["started"], r["run_id"]), reverse=True)[:limit]
    return rows, max(total, len(rows))


def approval_key(a: dict[str, Any]) -> str:
    return f"{a['node_id']}/{a['run_id']}/{a['step']}"


def approval_row(a: dict[str, Any], rule: str = "") -> dict[str, Any]:
    return {
        "node_id": str(a.get("node_id") or a.get("node", "")),
        "run_id": str(a.get("run_id", "")),
        "step": int(a.get("step", 0)),
        "rule": str(a.get("rule") or rule),
        "tool": str(a.get("tool", "")),
        "arguments": str(a.get("arguments", "")),
        "why": str(a.get("why", "")),
        "expires_at": float(a.get("expires_at") or 0.0),
    }


def merge_approvals(
    pending: list[dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    decisions: dict[str, dict[str, Any]],
    now: float,
) -> list[dict[str, Any]]:
    """The queue: the orchestrator's pending approvals, less those a newer report shows answered (the run
    no longer waits on that step), plus those waiting in reports it has not taken in yet; none expired.
    Each carries the decision already sent for it, if any (approved or denied, by whom)."""
    queue: dict[str, dict[str, Any]] = {}
    for a in pending:
        row = approval_row(a)
        report = reports.get(row["run_id"])
        if report is not None:
            p = report.get("pending")
            if report.get("state") != "waiting" or not isinstance(p, dict) or p.get("step") != row["step"]:
                continue
            row["rule"] = row["rule"] or str(report.get("rule", ""))
        queue[approval_key(row)] = row
    for report in reports.values():
        p = report.get("pending")
        if report.get("state") == "waiting" and isinstance(p, dict):
            row = approval_row({**p, "node_id": report.get("node_id", "")}, str(report.get("rule", "")))
            queue.setdefault(approval_key(row), row)
    out = []
    for row in queue.values():
        if row["expires_at"] and row["expires_at"] <= now:
            continue
        row["decision"] = decisions.get(f"{row['run_id']}:{row['step']}")
        out.append(row)
    return sorted(out, key=lambda r: (r["expires_at"], approval_key(r)))


class AgentFeed:
    """The latest report of each recent run and the decisions published, as this console received them."""

    def __init__(self, topics: Topics, link: MqttLink) -> None:
        self.topics, self.link = topics, link
        self.changes = Changes()
        self._lock = threading.Lock()
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()  # run id → report (JSON), oldest first
        self._decisions: dict[str, dict[str, Any]] = {}  # "<run>:<step>" → {approve, operator, reason, ts}

    def start(self) -> None:
        self.link.subscribe(self.topics.all_agent_runs(), self._on_report)
        self.link.subscribe(self.topics.node_agent_decisions("+"), self._on_decision)

    def _on_report(self, msg: Any) -> None:
        try:
            report = parse_payload(AgentRunReport, bytes(msg.payload))
        except PayloadError as e:
            log.info("ignored an agent run report the console cannot read", extra={"reason": str(e)[:200]})
            return
        if msg.topic != self.topics.agent_runs(report.node_id):
            log.info("ignored an agent run report on another node's topic", extra={"topic": msg.topic})
            return
        data = report.model_dump(mode="json")
        with self._lock:
            old = self._reports.get(report.run_id)
            if old is not None and old["ts"] > data["ts"]:
                return  # an older report that came late
            self._reports[report.run_id] = data
            self._reports.move_to_end(report.run_id)
            while len(self._reports) > MAX_RUNS_KEPT:
                self._reports.popitem(last=False)
        self.changes.bump()

    def _on_decision(self, msg: Any) -> None:
        if not msg.payload:  # cleared: the run ended
            return
        try:
            d = parse_payload(ApprovalDecision, bytes(msg.payload))
        except PayloadError as e:
            log.info("ignored a decision the console cannot read", extra={"reason": str(e)[:200]})
            return
        if msg.topic != self.topics.agent_decisions(d.node_id, d.run_id):
            return
        with self._lock:
            self._decisions[d.approval_id] = {
                "approve": d.approve,
                "operator": d.operator,
                "reason": d.reason,
                "ts": d.ts,
            }
            while len(self._decisions) > MAX_RUNS_KEPT:
                self._decisions.pop(next(iter(self._decisions)))
        self.changes.bump()

    # -- views (any thread) -----------------------------------------------------------------------------
    def reports(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._reports)

    def report(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._reports.get(run_id)

    def decisions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._decisions)

    def rows(self) -> dict[str, dict[str, Any]]:
        return {rid: run_row(r) for rid, r in self.reports().items()}
