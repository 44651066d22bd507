"""What the console knows of the fleet, kept live from MQTT and the orchestrator's `status`.

Two sources, both read-only: the orchestrator's `status` command, polled (page after page) every
`console_status_poll_s` (registry view: drift, transfers, outbox), and the node topics the
console subscribes to itself (status, telemetry, reported, desired, errors, sensor results) for
changes within milliseconds. The console never changes desired state here: pushes go through
`commands.py`, the orchestrator's command table.

MQTT handlers run on paho's network thread and only store facts and bump `version`; web
handlers wait for a change with `changed()` and build their views from a consistent copy. The fleet
page reads `table()`: every node's table row, built once per change however many browsers read it
(fleet_table.py pages, filters and summarises it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edgefleet.fleet.console.balena_view import BalenaPoller
from edgefleet.fleet.console.commands import CommandBridge
from edgefleet.fleet.console.fleet_table import load_of, table_row
from edgefleet.fleet.console.sensor_feed import SensorFeed
from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.fleet.control import CommandRefused, pages
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import (
    DesiredState,
    ErrorReport,
    NodeStatus,
    PayloadError,
    ReportedState,
    Telemetry,
    merged,
    parse_payload,
)
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.console.fleet")

HISTORY_S = 3600.0
HISTORY_METRICS = ("tokens_per_second", "temperature_c", "queue_depth", "slots_busy", "rss_bytes")


@dataclass
class NodeFacts:
    """What the console has received about one node."""

    status: NodeStatus | None = None
    since: float = 0.0
    telemetry: Telemetry | None = None
    reported: ReportedState | None = None
    errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))
    history: deque[tuple[float, ...]] = field(default_factory=lambda: deque(maxlen=4000))


def runs_insecure(status: NodeStatus) -> bool:
    """Whether the node says (in its status info) that it runs with EDGEFLEET_INSECURE."""
    return status.info is not None and status.info.insecure


class Changes:
    """A version number and the asyncio waiters to wake when it grows (set from any thread)."""

    def __init__(self) -> None:
        self.version = 0
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def bump(self) -> None:
        with self._lock:
            self.version += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, seen: int, timeout: float) -> int:
        """The version once it is past `seen` (or after `timeout`)."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.version != seen:
                return self.version
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return self.version


class LiveFleet:
    def __init__(self, settings: ConsoleSettings, commands: CommandBridge, link: MqttLink) -> None:
        self.settings = settings
        self.topics = Topics.for_site(settings.site, settings.topic_root)
        self.commands = commands
        self.link = link
        self.changes = Changes()
        self.sensors = SensorFeed(self.topics, link, self.changes.bump)
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeFacts] = {}
        self._rows: dict[str, dict[str, Any]] = {}  # the orchestrator's `status` rows
        self._desired: dict[str, DesiredState] = {}
        self._table: tuple[int, list[dict[str, Any]]] | None = None  # (version, table()) built last
        self.status_error = ""  # why the last `status` failed; "" when it answered
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="console-status-poll", daemon=True)
        self.balena: BalenaPoller | None = None  # balena's view of the fleet, when a balena fleet is named
        if settings.console_balena_fleet:
            self.balena = BalenaPoller(
                settings.console_balena_fleet,
                settings.balena_api_url,
                settings.console_balena_poll_s,
                self.changes.bump,
            )

    def start(self) -> None:
        t = self.topics
        self.link.subscribe(t.all_node_status(), self._on_status)
        self.link.subscribe(t.all_node_telemetry(), self._on_telemetry, qos=0)
        self.link.subscribe(t.all_node_reported(), self._on_reported)
        self.link.subscribe(t.all_desired(), self._on_desired)
        self.link.subscribe(t.all_errors(), self._on_error)
        self._poller.start()
        if self.balena is not None:
            self.balena.start()

    def stop(self) -> None:
        self._stop.set()
        if self.balena is not None:
            self.balena.stop()

    # -- MQTT (network thread) -----------------------------------------------------------------------
    def _facts(self, node_id: str) -> NodeFacts:
        return self._nodes.setdefault(node_id, NodeFacts())

    def _on_status(self, msg: Any) -> None:
        node_id = self.topics.node_of(msg.topic, "status")
        s = self._parse(NodeStatus, msg.payload)
        if s is None or node_id is None or node_id != s.node_id:
            return
        with self._lock:
            f = self._facts(node_id)
            if f.status is None or f.status.state != s.state:
                f.since = s.ts
            if s.info is None and f.status is not None and f.status.info is not None:
                s = s.model_copy(update={"info": f.status.info})
            f.status = s
        self.changes.bump()

    def _on_telemetry(self, msg: Any) -> None:
        node_id = self.topics.node_of(msg.topic, "telemetry")
        t = self._parse(Telemetry, msg.payload)
        if t is None or node_id is None or node_id != t.node_id:
            return
        with self._lock:
            f = self._facts(node_id)
            f.telemetry = t
            f.history.append((t.ts, t.tokens_per_second, t.temperature_c, t.queue_depth, t.slots_busy, t.rss_bytes))
            while f.history and f.history[0][0] < time.time() - HISTORY_S:
                f.history.popleft()
        self.changes.bump()

    def _on_reported(self, msg: Any) -> None:
        node_id = self.topics.node_of(msg.topic, "reported")
        r = self._parse(ReportedState, msg.payload)
        if r is None or node_id is None or node_id != r.node_id:
            return
        with self._lock:
            self._facts(node_id).reported = r
        self.changes.bump()

    def _on_desired(self, msg: Any) -> None:
        target = self.topics.desired_target(msg.topic)
        if target is None:
            return
        key = f"{target[0]}:{target[1]}"
        if not msg.payload:
            with self._lock:
                self._desired.pop(key, None)
        else:
            d = self._parse(DesiredState, msg.payload)
            if d is None or d.target.key != key:
                return
            with self._lock:
                self._desired[key] = d
        self.sensors.watch_rules(self.rules_by_target())
        self.changes.bump()

    def _on_error(self, msg: Any) -> None:
        e = self._parse(ErrorReport, msg.payload)
        if e is None:
            return
        with self._lock:
            if e.source not in self._nodes:
                return
            self._nodes[e.source].errors.appendleft({"ts": e.ts, "code": e.code, "message": e.message[:500]})
        self.changes.bump()

    @staticmethod
    def _parse(model: Any, payload: bytes) -> Any:
        if not payload:
            return None
        try:
            return parse_payload(model, payload)
        except PayloadError as e:
            log.info("ignored a message the console cannot read", extra={"reason": str(e)[:200]})
            return None

    # -- the orchestrator's view ------------------------------------------------------------------------
    def _status(self) -> tuple[dict[str, dict[str, Any]] | None, str]:
        """Every node of the orchestrator's `status`, page after page; (None, why) when it fails."""
        rows: dict[str, dict[str, Any]] = {}
        try:
            for result in pages(lambda c: self.commands.call(c, timeout=3.0), Command(op="status")):
                if not result.ok:
                    return None, result.message
                rows.update((r["node_id"], r) for r in result.data.get("nodes", []))
        except CommandRefused as e:
            return None, str(e)
        return rows, ""

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            rows, error = self._status()
            with self._lock:
                if rows is not None:
                    changed = rows != self._rows or bool(self.status_error)
                    self._rows, self.status_error = rows, ""
                else:
                    changed = self.status_error != error
                    self.status_error = error
            if changed:
                self.changes.bump()
            self._stop.wait(max(0.05, self.settings.console_status_poll_s - (time.monotonic() - started)))

    # -- views (any thread) ----------------------------------------------------------------------------
    def _ids(self) -> list[str]:
        return sorted(set(self._rows) | {k for k, f in self._nodes.items() if f.status is not None})

    def node_ids(self) -> list[str]:
        with self._lock:
            return self._ids()

    def fleet_rows(self) -> list[dict[str, Any]]:
        return [r for n in self.node_ids() if (r := self.node_row(n)) is not None]

    def _merged(self, node_id: str) -> tuple[dict[str, Any], NodeFacts | None] | None:
        """The orchestrator's row with the node's own newer word over it (the caller holds the lock)."""
        row = self._rows.get(node_id, {})
        f = self._nodes.get(node_id)
        if not row and (f is None or f.status is None):
            return None
        out: dict[str, Any] = {
            "node_id": node_id,
            "state": row.get("state", "offline"),
            "since": row.get("since", 0.0),
            "reason": "",
            "profile": row.get("profile", ""),
            "model": row.get("model", ""),
            "groups": list(row.get("groups", [])),
            "address": row.get("address", ""),
            "sync": row.get("sync", "unknown"),
            "drift": list(row.get("drift", [])),
            "outbox": row.get("outbox"),
            "insecure": bool(row.get("insecure", False)),
        }
        if f is not None and f.status is not None:  # the node's own latest word wins: it is newer
            s = f.status
            out.update(state=s.state, since=f.since or s.ts, reason=s.reason)
            out["insecure"] = out["insecure"] or runs_insecure(s)
            if s.info is not None:
                out.update(
                    profile=s.info.profile,
                    model=s.info.model.name,
                    groups=list(s.info.groups),
                    address=s.info.grpc_address,
                )
        if f is not None and f.telemetry is not None:
            out["outbox"] = f.telemetry.outbox_depth
        return out, f

    def node_row(self, node_id: str) -> dict[str, Any] | None:
        with self._lock:
            m = self._merged(node_id)
            if m is None:
                return None
            out, f = m
            out["transfers"] = dict(self._rows.get(node_id, {}).get("transfers", {}))
            out["errors"] = []
            t = f.telemetry if f else None
            out["load"] = (
                None
                if t is None
                else {
                    **load_of(t),
                    "outbox": t.outbox_depth,
                    "inbox": t.inbox_depth,
                    "rules": {k: v.model_dump() for k, v in t.rules.items()},
                }
            )
            rep = f.reported if f else None
            if rep is not None:
                out["transfers"] = {k: v.model_dump() for k, v in rep.transfers.items()}
                out["errors"] = [{"ts": rep.ts, "code": "not_applied", "message": m} for m in rep.errors]
            if f is not None:
                out["errors"] += list(f.errors)
        return out

    def table(self) -> list[dict[str, Any]]:
        """Every node as a fleet-table row (fleet_table.py): what the table shows, no more; built once
        per change of the fleet, however many pages and streams read it."""
        version = self.changes.version  # read first: a change after it makes the next call build again
        cached = self._table
        if cached is not None and cached[0] == version:
            return cached[1]
        rows = []
        with self._lock:
            for node_id in self._ids():
                m = self._merged(node_id)
                if m is not None:
                    rows.append(table_row(*m))
        self._table = (version, rows)
        return rows

    def desired_for(self, node_id: str, groups: list[str]) -> dict[str, dict[str, str]]:
        """What the node should have: templates, adapters, knowledge, rules as name → version."""
        with self._lock:
            docs = dict(self._desired)
        return {
            kind: {name: str(v.version) for name, v in merged(docs, node_id, groups, kind).items()}
            for kind in ("templates", "adapters", "knowledge", "rules")
        }

    def node_detail(self, node_id: str) -> dict[str, Any] | None:
        row = self.node_row(node_id)
        if row is None:
            return None
        with self._lock:
            f = self._nodes.get(node_id)
            rep = f.reported if f else None
            history = list(f.history) if f else []
        desired = self.desired_for(node_id, row["groups"])
        reported = {
            "templates": dict(rep.templates) if rep else {},
            "adapters": dict(rep.adapters) if rep else {},
            "knowledge": dict(rep.knowledge) if rep else {},
        }
        compare = {}
        for kind, want in desired.items():
            have = reported.get(kind)
            names = sorted(set(want) | set(have or {}))
            compare[kind] = [
                {
                    "name": n,
                    "desired": want.get(n, ""),
                    "reported": "(not reported)" if have is None else have.get(n, ""),
                    "differs": have is not None and want.get(n, "") != have.get(n, ""),
                }
                for n in names
            ]
        return {**row, "compare": compare, "history": self.local_history(history)}

    @staticmethod
    def local_history(samples: list[tuple[float, ...]]) -> dict[str, Any]:
        """Columns for the plots: ts, then one list per metric (what the console itself received)."""
        cols: list[tuple[Any, ...]] = list(zip(*samples, strict=True)) if samples else [() for _ in range(6)]
        return {"source": "live", "ts": list(cols[0]), **{m: list(cols[i + 1]) for i, m in enumerate(HISTORY_METRICS)}}

    def targets(self) -> dict[str, dict[str, Any]]:
        """Every target with desired state: its generation and entries per kind (name → version)."""
        with self._lock:
            docs = dict(self._desired)
        return {
            key: {
                "generation": d.generation,
                **{
                    kind: {n: str(v.version) for n, v in getattr(d, kind).items()}
                    for kind in ("templates", "adapters", "knowledge", "rules")
                },
            }
            for key, d in sorted(docs.items())
        }

    def rules_by_target(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: {n: r.model_dump(mode="json") for n, r in d.rules.items()} for k, d in self._desired.items()}

    def groups(self) -> list[str]:
        return sorted({g for r in self.table() for g in r["groups"]})
