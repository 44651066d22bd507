"""The fleet page at any size: a summary, one page of rows, and batched live changes to that page.

The console keeps the whole fleet in memory (live_fleet.py). A browser never receives it whole: it asks
for the summary (counts by state, out of sync, throttled, with errors; totals of slots, queue and
tokens/s) and one page of rows, filtered, searched and sorted here (`FleetQuery`: the parameters of
`GET /`, `GET /fleet/rows` and `/events/fleet`). Its live stream then sends, at most every
`LIVE_GAP_S`, only what changed on that page and in the summary (`PageStream`): a node that reports
ten times in between is sent once, as it is now, and a node off the page is not sent at all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from edgefleet.proto.payloads import Telemetry

if TYPE_CHECKING:
    from edgefleet.fleet.console.live_fleet import LiveFleet, NodeFacts

LIVE_GAP_S = 0.5  # at most two live events a second per browser, however many nodes talk
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_QUERY_CHARS = 200
MAX_DRIFT_SHOWN = 10  # reasons a table row lists; the node page shows every one
STATES = ("online", "offline", "failed")
FLAGS = ("out-of-sync", "throttled", "errors")  # also accepted as `state`: the summary's other counts


def _load(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: -1 if r["load"] is None or r["load"][key] is None else r["load"][key]


SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "node_id": lambda r: r["node_id"],
    "state": lambda r: r["state"],
    "profile": lambda r: r["profile"],
    "model": lambda r: r["model"],
    "groups": lambda r: ",".join(r["groups"]),
    "slots": _load("slots_busy"),
    "queue": _load("queue"),
    "tps": _load("tokens_per_second"),
    "temp": _load("temperature_c"),
    "rss": _load("rss_bytes"),
    "outbox": lambda r: -1 if r["outbox"] is None else r["outbox"],
    "sync": lambda r: r["sync"],
}


def load_of(t: Telemetry) -> dict[str, Any]:
    """The telemetry figures a table row shows."""
    return {
        "ts": t.ts,
        "slots_busy": t.slots_busy,
        "slots_total": t.slots_total,
        "queue": t.queue_depth,
        "tokens_per_second": t.tokens_per_second,
        "temperature_c": t.temperature_c,
        "throttled": t.throttled,
        "shedding": t.shedding,
        "rss_bytes": t.rss_bytes,
    }


def table_row(row: dict[str, Any], f: NodeFacts | None) -> dict[str, Any]:
    """A fleet-table row from a node's merged row: its load without per-rule figures, its errors as a
    count and the latest message, at most MAX_DRIFT_SHOWN drift reasons (the node page has the rest)."""
    rep = f.reported if f else None
    messages = (list(rep.errors) if rep else []) + [e["message"] for e in (f.errors if f else ())]
    row["drift"] = row["drift"][:MAX_DRIFT_SHOWN]
    row["errors"], row["error"] = len(messages), messages[0][:200] if messages else ""
    row["load"] = load_of(f.telemetry) if f is not None and f.telemetry is not None else None
    return row


def throttled(r: dict[str, Any]) -> bool:
    return r["state"] == "online" and r["load"] is not None and bool(r["load"]["throttled"])


class QueryError(ValueError):
    """A fleet query parameter the console cannot use; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise QueryError(name, f"{raw[:40]!r} is not a whole number from {low} to {high}")
    return int(raw)


@dataclass(frozen=True)
class FleetQuery:
    """Which page of the fleet table: a search, a state (or flag) and a group, a sort, a window."""

    q: str = ""  # words that must all appear in the node id, profile, model, groups, address or reason
    state: str = ""  # one of STATES or FLAGS; empty: every node
    group: str = ""
    sort: str = "node_id"  # one of SORT_KEYS
    desc: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> FleetQuery:
        """From URL parameters; a QueryError names the first one that is wrong and what it accepts."""
        q, state, group = params.get("q", "").strip(), params.get("state", ""), params.get("group", "")
        for name, value in (("q", q), ("group", group)):
            if len(value) > MAX_QUERY_CHARS:
                raise QueryError(name, f"at most {MAX_QUERY_CHARS} characters, not {len(value)}")
        if state and state not in STATES + FLAGS:
            raise QueryError("state", f"{state[:40]!r} is not one of {', '.join(STATES + FLAGS)}")
        sort = params.get("sort", "") or "node_id"
        if sort not in SORT_KEYS:
            raise QueryError("sort", f"{sort[:40]!r} is not one of {', '.join(SORT_KEYS)}")
        desc = params.get("desc", "")
        if desc not in ("", "0", "1"):
            raise QueryError("desc", f"{desc[:40]!r} is not 0 or 1")
        limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return cls(q, state, group, sort, desc == "1", _int(params, "offset", 0, 0, 10**9), limit)

    def params(self) -> dict[str, str]:
        """The query as URL parameters, defaults left out."""
        return {k: ("1" if v is True else str(v)) for k, v in asdict(self).items() if v != getattr(FleetQuery, k)}

    def matches(self, r: dict[str, Any]) -> bool:
        if self.group and self.group not in r["groups"]:
            return False
        if self.state in STATES and r["state"] != self.state:
            return False
        if self.state == "out-of-sync" and r["sync"] != "drifted":
            return False
        if (self.state == "throttled" and not throttled(r)) or (self.state == "errors" and not r["errors"]):
            return False
        if self.q:
            text = " ".join((r["node_id"], r["profile"], r["model"], r["address"], r["reason"], *r["groups"]))
            return all(word in text.lower() for word in self.q.lower().split())
        return True


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the whole fleet, and its totals of slots, queue and tokens/s (online nodes)."""
    s: dict[str, Any] = dict.fromkeys(("nodes", *STATES, "out_of_sync", "throttled", "errors"), 0)
    busy = total = queue = 0
    tps = 0.0
    for r in rows:
        s["nodes"] += 1
        if r["state"] in STATES:
            s[r["state"]] += 1
        s["out_of_sync"] += r["sync"] == "drifted"
        s["throttled"] += throttled(r)
        s["errors"] += r["errors"] > 0
        load = r["load"]
        if load is not None and r["state"] == "online":
            busy, total, queue = busy + load["slots_busy"], total + load["slots_total"], queue + load["queue"]
            tps += load["tokens_per_second"]
    return {**s, "slots_busy": busy, "slots_total": total, "queue": queue, "tokens_per_second": round(tps, 1)}


def digest(view: dict[str, Any]) -> str:
    """What identifies the rows of a page as the browser holds them (`have=` of the stream)."""
    rows = json.dumps([view["rows"], view["total"], view["offset"]], sort_keys=True)
    return hashlib.sha256(rows.encode()).hexdigest()[:20]


def fleet_view(fleet: LiveFleet, query: FleetQuery) -> dict[str, Any]:
    """The summary and one page of rows for `query`, with what goes beside them."""
    rows = fleet.table()
    matched = [r for r in rows if query.matches(r)]
    key = SORT_KEYS[query.sort]
    matched.sort(key=lambda r: (key(r), r["node_id"]), reverse=query.desc)
    offset = query.offset if query.offset < len(matched) else max(0, (len(matched) - 1) // query.limit * query.limit)
    page = matched[offset : offset + query.limit]
    view: dict[str, Any] = {
        "query": replace(query, offset=offset).params(),
        "rows": page,
        "total": len(matched),
        "offset": offset,
        "limit": query.limit,
        "summary": summary(rows),
        "groups": sorted({g for r in rows for g in r["groups"]}),
        "status_error": fleet.status_error,
        "balena": None,
        "now": time.time(),
    }
    if fleet.balena is not None:
        b = fleet.balena.view(rows)
        shown = {r["node_id"] for r in page}
        view["balena"] = {**b, "nodes": {k: v for k, v in b["nodes"].items() if k in shown}}
    view["digest"] = digest(view)
    return view


class PageStream:
    """What one browser holds of its page, and what to send it next: only the rows that changed, the
    page's order when it changed, and each other part of the view when it changed."""

    PARTS = ("total", "offset", "limit", "query", "summary", "groups", "status_error", "balena")

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.order: list[str] | None = None
        self.parts: dict[str, Any] = {}

    def seed(self, view: dict[str, Any]) -> None:
        """The browser holds these rows already (it fetched them): send only what changes from here."""
        self.rows = {r["node_id"]: r for r in view["rows"]}
        self.order = list(self.rows)
        self.parts.update(total=view["total"], offset=view["offset"])

    def update(self, view: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The event that brings the browser to `view`, or None when it has it already."""
        event: dict[str, Any] = {}
        order = [r["node_id"] for r in view["rows"]]
        if order != self.order:
            event["order"] = self.order = order
        changed = [r for r in view["rows"] if self.rows.get(r["node_id"]) != r]
        if changed:
            event["rows"] = changed
        self.rows = {r["node_id"]: r for r in view["rows"]}
        for part in self.PARTS:
            if part not in self.parts or self.parts[part] != view[part]:
                event[part] = self.parts[part] = view[part]
        if not event:
            return None
        return {**event, "now": now}
