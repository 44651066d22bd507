"""The fleet in memory: one immutable snapshot of every node, replaced on each ingest.

Readers (the router, the web console, `fleet status` one day) take the current `FleetSnapshot`
by reference under a short lock and read it as long as they like: nothing in it ever changes,
no SQLite, no JSON per call. Writers (ingest, the desired-state publisher) are serialized by
a second lock and build the next snapshot from the facts they keep, then swap it in. Ingest
applies a batch of messages inside `batch()`: one new snapshot for the whole batch, not one per
message (building one costs a pass over every node).

A node's state is the one it published: `online`, `offline` (a shutdown, or its last will:
reason "connection lost"), or `failed` (its engine died; the process exits to be restarted).

What a node says about itself is bounded here (orchestrator/node_claims.py): each snapshot carries
the most slots its firmware profile allows (`slot_cap`) and whether its model file is the one the
site knows for that model name (`model_verified`); a claim beyond either is logged once per node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from edgefleet.orchestrator.drift import desired_generations, drift_reasons
from edgefleet.orchestrator.node_claims import ModelHashes, SlotCaps, shipped_slot_caps
from edgefleet.orchestrator.registry import NodeRecord
from edgefleet.proto.payloads import DesiredState, ErrorReport, NodeInfoPayload, NodeStatus, ReportedState, Telemetry

log = logging.getLogger("edgefleet.orchestrator.fleet_view")
NodeState = Literal["online", "offline", "failed"]
_EMPTY: Mapping[str, str] = MappingProxyType({})


def _none() -> Mapping[str, Any]:
    return MappingProxyType({})


def _frozen(d: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(d))


def node_state(state: str) -> NodeState:
    """The state a node published (an unknown one, from a newer node, reads as offline: not routable)."""
    return "online" if state == "online" else "failed" if state == "failed" else "offline"


@dataclass(frozen=True)
class NodeLoad:
    """The node's latest telemetry: what a router ranks nodes by."""

    ts: float
    queue_depth: int
    slots_total: int
    slots_busy: int
    slots_available: int
    tokens_per_second: float | None  # None until the node has decoded something
    temperature_c: float | None
    throttled: bool
    shedding: bool

    @classmethod
    def of(cls, t: Telemetry) -> NodeLoad:
        return cls(
            t.ts,
            t.queue_depth,
            t.slots_total,
            t.slots_busy,
            t.slots_available,
            t.tokens_per_second or None,
            t.temperature_c,
            t.throttled,
            t.shedding,
        )


@dataclass(frozen=True)
class NodeError:
    code: str
    message: str
    ts: float


@dataclass(frozen=True)
class NodeSnapshot:
    node_id: str
    state: NodeState
    state_reason: str
    since: float  # when it entered `state`
    last_seen: float
    address: str = ""  # gRPC host:port the node advertises
    profile: str = ""
    model: str = ""
    groups: tuple[str, ...] = ()
    adapters: Mapping[str, str] = field(default_factory=_none)  # name → version loaded
    templates: Mapping[str, str] = field(default_factory=_none)  # name → version in effect
    collections: Mapping[str, str] = field(default_factory=_none)  # knowledge collection → version installed
    load: NodeLoad | None = None
    desired_generations: Mapping[str, int] = field(default_factory=_none)
    reported_generations: Mapping[str, int] = field(default_factory=_none)
    has_reported: bool = False
    drift: tuple[str, ...] = ()  # why it is not what its desired state says; empty: in sync
    last_error: NodeError | None = None
    # what the front door's probe found on the node itself (GetNodeInfo, ListCollections): adapters
    # loaded at start and collections ingested over gRPC, which reported state does not list
    served_adapters: frozenset[str] = frozenset()
    served_collections: frozenset[str] = frozenset()
    # bounds on the node's own word (orchestrator/node_claims.py)
    slot_cap: int = 0  # the most slots the front door uses on it (its profile's); 0: no bound known
    model_sha256: str = ""  # the hash it reports for `model`
    model_verified: bool = True  # `model_sha256` is the site's hash for `model` (or the site knows none)
    insecure: bool = False  # the node runs with EDGEFLEET_INSECURE (its status info says so)

    def has_adapter(self, name: str) -> bool:
        return name in self.adapters or name in self.served_adapters

    def has_collection(self, name: str) -> bool:
        return name in self.collections or name in self.served_collections

    @property
    def in_sync(self) -> bool:
        return self.has_reported and not self.drift

    @property
    def generation_behind(self) -> bool:
        """A desired generation the node has not applied yet."""
        return any(self.reported_generations.get(k, 0) < g for k, g in self.desired_generations.items())


@dataclass(frozen=True)
class FleetSnapshot:
    nodes: Mapping[str, NodeSnapshot]
    desired_generations: Mapping[str, int]  # target key → newest generation
    version: int  # grows by one with every change
    taken_at: float

    def node(self, node_id: str) -> NodeSnapshot | None:
        return self.nodes.get(node_id)

    def in_group(self, group: str) -> list[NodeSnapshot]:
        return [n for n in self.nodes.values() if group in n.groups]

    def online(self) -> list[NodeSnapshot]:
        return [n for n in self.nodes.values() if n.state == "online"]


@dataclass(frozen=True)
class _Presence:
    state: str
    reason: str
    since: float
    info: NodeInfoPayload | None


class FleetView:
    def __init__(self, slot_caps: SlotCaps | None = None) -> None:
        self._lock = threading.Lock()  # guards the reference to the current snapshot
        self._write_lock = threading.RLock()  # one writer at a time (a batch holds it across its writes)
        self._pending: set[str] | None = None  # inside `batch`: the nodes whose snapshot is due
        self._pending_any = False  # inside `batch`: something changed (desired state with no node, too)
        self._snapshot = FleetSnapshot(MappingProxyType({}), MappingProxyType({}), 0, time.time())
        # the writers' facts, from which node snapshots are built
        self._presence: dict[str, _Presence] = {}
        self._last_seen: dict[str, float] = {}
        self._reported: dict[str, ReportedState] = {}
        self._load: dict[str, NodeLoad] = {}
        self._errors: dict[str, NodeError] = {}
        self._desired: dict[str, DesiredState] = {}
        self._probed: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        # bounds on what nodes claim
        self._caps = slot_caps or shipped_slot_caps()
        self._hashes = ModelHashes()
        self._site_hashes: dict[str, str] = {}  # model → the sha256 the site knows for it
        self._hashes_dirty = True  # a node's model info changed since the site's hashes were counted
        self._warned_slots: set[str] = set()
        self._warned_model: dict[str, str] = {}  # node → the hash it was warned for

    def snapshot(self) -> FleetSnapshot:
        with self._lock:
            return self._snapshot

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Writes inside make one new snapshot, published when the batch ends (nested: part of it)."""
        with self._write_lock:
            if self._pending is not None:
                yield
                return
            self._pending, self._pending_any = set(), False
            try:
                yield
            finally:
                todo, self._pending = self._pending, None
                if self._pending_any:
                    self._publish(todo)

    def state_of(self, node_id: str) -> str | None:
        """The state the node last published, as the writers know it now (None: never heard of)."""
        with self._write_lock:
            presence = self._presence.get(node_id)
        return presence.state if presence is not None else None

    # -- writers ------------------------------------------------------------------------------------------
    def apply_status(self, status: NodeStatus, seen: float | None = None) -> None:
        with self._write_lock:
            before = self._presence.get(status.node_id)
            since = before.since if before is not None and before.state == status.state else status.ts
            info = status.info or (before.info if before is not None else None)
            if status.info is not None:
                self._hashes.seen(status.info.model.name, status.info.model.sha256)
            if before is None or _model_of(before.info) != _model_of(info):
                self._hashes_dirty = True  # telemetry and state changes do not recount (0.6 ms at 1,000 nodes)
            self._presence[status.node_id] = _Presence(status.state, status.reason, since, info)
            self._last_seen[status.node_id] = seen or time.time()
            self._check_slots(status.node_id)
            self._publish([status.node_id])

    def apply_telemetry(self, t: Telemetry, seen: float | None = None) -> None:
        with self._write_lock:
            self._load[t.node_id] = NodeLoad.of(t)
            self._last_seen[t.node_id] = seen or time.time()
            self._check_slots(t.node_id)
            self._publish([t.node_id])

    def apply_reported(self, rep: ReportedState, seen: float | None = None) -> None:
        with self._write_lock:
            self._reported[rep.node_id] = rep
            self._last_seen[rep.node_id] = seen or time.time()
            self._publish([rep.node_id])

    def apply_desired(self, doc: DesiredState) -> None:
        """Keep the newest generation per target; every node's drift is described again."""
        with self._write_lock:
            have = self._desired.get(doc.target.key)
            if have is not None and have.generation > doc.generation:
                return
            self._desired[doc.target.key] = doc
            self._publish(self._presence)

    def apply_node_error(self, report: ErrorReport) -> None:
        """The latest error a known node reported (anyone may publish on the errors topics: others are dropped)."""
        with self._write_lock:
            if report.source not in self._presence:
                return
            self._errors[report.source] = NodeError(report.code, report.message, report.ts)
            self._publish([report.source])

    def apply_probe(self, node_id: str, adapters: Iterable[str], collections: Iterable[str]) -> None:
        """What a node said it serves when asked directly (the front door's probe); unchanged: no new snapshot."""
        facts = (frozenset(adapters), frozenset(collections))
        with self._write_lock:
            if node_id not in self._presence or self._probed.get(node_id) == facts:
                return
            self._probed[node_id] = facts
            self._publish([node_id])

    def rebuild(self, records: Iterable[NodeRecord], desired: Mapping[str, DesiredState]) -> None:
        """Start over from what the registry kept (at start, before any message arrives)."""
        with self._write_lock:
            self._presence.clear()
            self._last_seen.clear()
            self._reported.clear()
            self._load.clear()
            self._errors.clear()
            self._desired = dict(desired)
            for r in sorted(records, key=lambda r: r.since):  # the earliest first: ties of hashes go to them
                if r.info is not None:
                    self._hashes.seen(r.info.model.name, r.info.model.sha256)
                self._presence[r.node_id] = _Presence(r.state, r.reason, r.since, r.info)
                self._last_seen[r.node_id] = r.last_seen
                if r.reported is not None:
                    self._reported[r.node_id] = r.reported
                if r.telemetry is not None:
                    self._load[r.node_id] = NodeLoad.of(r.telemetry)
                self._check_slots(r.node_id)
            self._publish(self._presence, replace_all=True)

    # -- building the next snapshot (under the write lock) ---------------------------------------------
    def _node(self, node_id: str) -> NodeSnapshot | None:
        presence = self._presence.get(node_id)
        if presence is None:  # nothing to show before the node's status is known
            return None
        info = presence.info
        groups = list(info.groups) if info else []
        rep = self._reported.get(node_id)
        model, sha = (info.model.name, info.model.sha256) if info else ("", "")
        return NodeSnapshot(
            node_id=node_id,
            state=node_state(presence.state),
            state_reason=presence.reason,
            since=presence.since,
            last_seen=self._last_seen.get(node_id, presence.since),
            address=info.grpc_address if info else "",
            profile=info.profile if info else "",
            model=model,
            groups=tuple(groups),
            adapters=_frozen(rep.adapters) if rep else _EMPTY,
            templates=_frozen(rep.templates) if rep else _EMPTY,
            collections=_frozen(rep.knowledge) if rep else _EMPTY,
            load=self._load.get(node_id),
            desired_generations=MappingProxyType(desired_generations(node_id, groups, self._desired)),
            reported_generations=MappingProxyType(dict(rep.generations) if rep else {}),
            has_reported=rep is not None,
            drift=tuple(drift_reasons(node_id, groups, self._desired, rep)),
            last_error=self._errors.get(node_id),
            served_adapters=self._probed.get(node_id, (frozenset(), frozenset()))[0],
            served_collections=self._probed.get(node_id, (frozenset(), frozenset()))[1],
            insecure=info.insecure if info else False,
            slot_cap=self._caps.cap(info.profile if info else ""),
            model_sha256=sha,
            model_verified=self._model_verified(node_id, model, sha),
        )

    def _model_verified(self, node_id: str, model: str, sha: str) -> bool:
        site = self._site_hashes.get(model, "")
        if not model or not site or sha == site:
            self._warned_model.pop(node_id, None)
            return True
        if self._warned_model.get(node_id) != sha:
            self._warned_model[node_id] = sha
            log.warning(
                "node's model file is not the site's: not routed for requests naming the model",
                extra={"node": node_id, "model": model, "sha256": sha or None, "site_sha256": site},
            )
        return False

    def _check_slots(self, node_id: str) -> None:
        """Log once per node a slot claim beyond its profile's cap (the router uses the cap)."""
        load, presence = self._load.get(node_id), self._presence.get(node_id)
        if load is None or presence is None or node_id in self._warned_slots:
            return
        profile = presence.info.profile if presence.info else ""
        cap, claimed = self._caps.cap(profile), max(load.slots_total, load.slots_available)
        if claimed > cap:
            self._warned_slots.add(node_id)
            log.warning(
                "node claims more slots than its profile allows: capped",
                extra={
                    "node": node_id,
                    "profile": profile,
                    "claimed_slots": claimed,
                    "cap": cap,
                    "profile_known": profile in self._caps.by_profile,
                },
            )

    def _rehash(self, node_ids: set[str]) -> None:
        """Recount the site's model hashes; every node naming a model whose hash changed is built again."""
        claims = [(p.info.model.name, p.info.model.sha256) for p in self._presence.values() if p.info]
        hashes = self._hashes.site_hashes(claims)
        changed = {m for m in hashes.keys() | self._site_hashes.keys() if hashes.get(m) != self._site_hashes.get(m)}
        self._site_hashes = hashes
        if changed:
            node_ids.update(n for n, p in self._presence.items() if p.info and p.info.model.name in changed)

    def _publish(self, node_ids: Iterable[str], replace_all: bool = False) -> None:
        if self._pending is not None and not replace_all:
            self._pending.update(node_ids)
            self._pending_any = True
            return
        current = self.snapshot()
        nodes = {} if replace_all else dict(current.nodes)
        todo = set(node_ids)
        if self._hashes_dirty or replace_all:
            self._rehash(todo)
            self._hashes_dirty = False
        for node_id in sorted(todo):
            snap = self._node(node_id)
            if snap is not None:
                nodes[node_id] = snap
        nxt = FleetSnapshot(
            MappingProxyType(dict(sorted(nodes.items()))),
            MappingProxyType({k: d.generation for k, d in sorted(self._desired.items())}),
            current.version + 1,
            time.time(),
        )
        with self._lock:
            self._snapshot = nxt


def _model_of(info: NodeInfoPayload | None) -> tuple[str, str] | None:
    return (info.model.name, info.model.sha256) if info is not None else None
