"""Routing policy: which node takes a request. Data in, data out; no I/O, no clock of its own.

The router keeps its own books: in-flight requests per node (a slot is claimed before a request
is sent and released when it ends: telemetry lags, so it only refreshes a node's slot total) and
cooldowns (a node that failed `cooldown_failures` times within `cooldown_window_s` gets no traffic
for `cooldown_s`, then comes back by itself). Everything else comes from the fleet snapshot it is
handed: state, model, adapters, templates, collections, usable slots, throttling, shedding.

What a node says about itself is bounded before it counts (the fleet view fills in the bounds,
orchestrator/node_claims.py): its usable slots never exceed its firmware profile's (`slot_cap`), and
it serves a requested model only if its model file is the one the site knows for that name
(`model_verified`). A node at its capped slots in the router's own books gets nothing more, whatever
free slots it announces; a node whose calls keep failing cools down, whatever it announces.

Order among eligible nodes with a free slot: the affinity node first (rendezvous hashing of the
request's prefix key over the eligible nodes) when affinity is on and it has a free slot; then
below-throttle before throttled, least loaded (in flight / usable slots), shortest node queue, id.
A lock makes each claim atomic, so one router may be shared by threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgefleet.orchestrator.fleet_view import FleetSnapshot, NodeSnapshot
from edgefleet.proto.error_codes import ErrorCode


@dataclass(frozen=True)
class RoutingPolicy:
    affinity: bool = True
    slots_when_unknown: int = 1  # usable slots assumed before a node's first telemetry
    max_slots_per_node: int = 0  # 0: as many as the node may use (its claim, capped by its profile)
    cooldown_failures: int = 3
    cooldown_window_s: float = 30.0
    cooldown_s: float = 15.0


@dataclass(frozen=True)
class RouteRequest:
    """What a request needs of a node; empty strings need nothing."""

    model: str = ""
    adapter: str = ""
    template: str = ""
    collection: str = ""
    node: str = ""  # pinned by the caller (x-edgefleet-node)
    group: str = ""  # pinned by the caller (x-edgefleet-group)
    affinity_key: str = ""  # requests sharing a prompt prefix share this key
    exclude: frozenset[str] = frozenset()  # nodes already tried for this request

    def describe(self) -> str:
        wants = [f"{k} {v!r}" for k, v in self._needs() if v]
        return ", ".join(wants) or "any node"

    def keeping(self, needs: list[str]) -> RouteRequest:
        """The request with only the named needs (the others empty, no affinity, nothing excluded)."""

        def need(name: str, value: str) -> str:
            return value if name in needs else ""

        return RouteRequest(
            model=need("model", self.model),
            adapter=need("adapter", self.adapter),
            template=need("template", self.template),
            collection=need("collection", self.collection),
            node=need("node", self.node),
            group=need("group", self.group),
        )

    def _needs(self) -> list[tuple[str, str]]:
        return [
            ("model", self.model),
            ("adapter", self.adapter),
            ("template", self.template),
            ("collection", self.collection),
            ("node", self.node),
            ("group", self.group),
        ]


@dataclass(frozen=True)
class Claim:
    node_id: str
    address: str


@dataclass(frozen=True)
class Decision:
    """A claimed slot, or why not: NO_NODE (naming the `param` no node has), UNAVAILABLE or ALL_BUSY."""

    claim: Claim | None
    refusal: ErrorCode | None = None
    message: str = ""
    param: str = ""  # with NO_NODE: the need no node of the fleet has (model, adapter, …, node, group)


@dataclass
class _Health:
    failures: list[float] = field(default_factory=list)
    cooled_until: float = 0.0


def serves(node: NodeSnapshot, req: RouteRequest) -> bool:
    """The node has what the request asks for (whatever its state)."""
    return (
        (not req.model or serves_model(node, req.model))
        and (not req.adapter or node.has_adapter(req.adapter))
        and (not req.template or req.template in node.templates)
        and (not req.collection or node.has_collection(req.collection))
        and (not req.node or node.node_id == req.node)
        and (not req.group or req.group in node.groups)
    )


def serves_model(node: NodeSnapshot, model: str) -> bool:
    """The node names the model, and its model file is the one the site knows for that name."""
    return node.model == model and node.model_verified


def routable(node: NodeSnapshot) -> bool:
    """Online, with an address, not shedding load."""
    return node.state == "online" and bool(node.address) and not (node.load is not None and node.load.shedding)


def rendezvous_weight(key: str, node_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{node_id}".encode(), digest_size=8).digest(), "big")


def _weigher(key: str) -> Callable[[str], bytes]:
    """`rendezvous_weight(key, ·)` as 8 big-endian bytes (the same order), the key's part hashed once."""
    copy = hashlib.blake2b(f"{key}\x00".encode(), digest_size=8).copy

    def weight(node_id: str) -> bytes:
        h = copy()
        h.update(node_id.encode())
        return h.digest()

    return weight


class _Homes:
    """Rendezvous order of the fleet's nodes per affinity key, kept for keys that come back.

    `home` is `max(eligible, key=rendezvous_weight)`. A key seen for the first time is weighed over
    the eligible nodes; from its second time on, its order over the fleet's node ids is kept (the
    most recent `KEYS` keys) and the home is the first eligible node in it (ties of the 64-bit
    weights go to the smaller id, as in the fleet view's order). An eligible node outside the ids
    the orders cover (a node that joined) makes them again, over the fleet's ids now."""

    KEYS = 128  # orders kept (affinity keys are templates and system prompts: few per site)
    SEEN = 4096  # keys remembered as seen once
    DIRECT = 32  # fewer eligible nodes than this: always weighed directly

    def __init__(self) -> None:
        self._orders: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._covered: frozenset[str] = frozenset()

    def home(self, key: str, eligible: list[NodeSnapshot], fleet: Iterable[str]) -> NodeSnapshot:
        order = self._orders.get(key)
        if len(eligible) < self.DIRECT or (order is None and self._first_time(key)):
            weight = _weigher(key)
            return max(eligible, key=lambda n: weight(n.node_id))
        by_id = {n.node_id: n for n in eligible}
        if not self._covered.issuperset(by_id):
            self._covered = frozenset(fleet).union(by_id)
            self._orders.clear()
            order = None
        if order is None:
            weight = _weigher(key)
            order = tuple(sorted(self._covered, key=lambda i: (-int.from_bytes(weight(i), "big"), i)))
            self._orders[key] = order
            while len(self._orders) > self.KEYS:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(key)
        for node_id in order:
            n = by_id.get(node_id)
            if n is not None:
                return n
        raise AssertionError("an eligible node outside the ids the orders cover")  # unreachable

    def _first_time(self, key: str) -> bool:
        if key in self._seen:
            del self._seen[key]
            return False
        self._seen[key] = None
        while len(self._seen) > self.SEEN:
            self._seen.popitem(last=False)
        return True


class Router:
    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._health: dict[str, _Health] = {}
        self._draining: dict[str, float] = {}  # node → the `since` of the status it was draining in
        self._homes = _Homes()

    # -- the books --------------------------------------------------------------------------------
    def in_flight(self, node_id: str) -> int:
        with self._lock:
            return self._in_flight.get(node_id, 0)

    def capacity(self, node: NodeSnapshot) -> int:
        """The slots the router uses on the node: what it says it can use, capped by its profile
        (`slot_cap`) and by the policy's `max_slots_per_node`."""
        usable = node.load.slots_available if node.load is not None else self.policy.slots_when_unknown
        for cap in (node.slot_cap, self.policy.max_slots_per_node):
            if cap > 0:
                usable = min(usable, cap)
        return max(0, usable)

    def cooling(self, node_id: str, now: float) -> bool:
        with self._lock:
            h = self._health.get(node_id)
            return h is not None and h.cooled_until > now

    def cooling_nodes(self, now: float) -> list[str]:
        with self._lock:
            return sorted(n for n, h in self._health.items() if h.cooled_until > now)

    def release(self, claim: Claim) -> None:
        with self._lock:
            left = self._in_flight.get(claim.node_id, 0) - 1
            if left > 0:
                self._in_flight[claim.node_id] = left
            else:
                self._in_flight.pop(claim.node_id, None)

    def succeeded(self, node_id: str) -> None:
        with self._lock:
            self._health.pop(node_id, None)

    def failed(self, node_id: str, now: float) -> bool:
        """Count a failure; True when it starts a cooldown."""
        p = self.policy
        with self._lock:
            h = self._health.setdefault(node_id, _Health())
            h.failures = [t for t in h.failures if now - t < p.cooldown_window_s] + [now]
            if len(h.failures) >= p.cooldown_failures and h.cooled_until <= now:
                h.cooled_until = now + p.cooldown_s
                h.failures.clear()
                return True
            return False

    def draining(self, node: NodeSnapshot) -> None:
        """The node said it is draining: no traffic until it publishes a new status."""
        with self._lock:
            self._draining[node.node_id] = node.since

    def _is_draining(self, node: NodeSnapshot) -> bool:
        since = self._draining.get(node.node_id)
        if since is None:
            return False
        if since != node.since:  # a new status since (restarted): back in rotation
            del self._draining[node.node_id]
            return False
        return True

    # -- the decision -----------------------------------------------------------------------------
    # One pass over the fleet per decision, in plain loops (no per-node calls, no list of tuples), and
    # the rendezvous order of an affinity key kept between decisions: a decision over 1,000 nodes
    # stays well under a millisecond (bench/router_bench.py).
    def candidates(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> list[NodeSnapshot]:
        """Eligible nodes, with or without a free slot: routable, serving the request, not cooling or draining."""
        with self._lock:
            return self._candidates(fleet, req, now)

    def _blocked(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> set[str]:
        """Nodes out of this decision whatever they serve: excluded by the request, cooling, draining."""
        out = set(req.exclude)
        out.update(n for n, h in self._health.items() if h.cooled_until > now)
        for node_id in list(self._draining):
            snap = fleet.nodes.get(node_id)
            if snap is not None and self._is_draining(snap):
                out.add(node_id)
        return out

    def _candidates(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> list[NodeSnapshot]:
        blocked = self._blocked(fleet, req, now)
        model, adapter, template, collection, group = req.model, req.adapter, req.template, req.collection, req.group
        if req.node:
            pinned = fleet.nodes.get(req.node)
            nodes: Iterable[NodeSnapshot] = () if pinned is None or pinned.node_id != req.node else (pinned,)
        else:
            nodes = fleet.nodes.values()
        out = []
        for n in nodes:  # routable(n) and serves(n, req), inlined (test_router_fast.py holds them equal)
            if n.state != "online" or not n.address or (n.load is not None and n.load.shedding):
                continue
            if model and (n.model != model or not n.model_verified):
                continue
            if (adapter and not n.has_adapter(adapter)) or (template and template not in n.templates):
                continue
            if (collection and not n.has_collection(collection)) or (group and group not in n.groups):
                continue
            if blocked and n.node_id in blocked:
                continue
            out.append(n)
        return out

    def claim(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> Decision:
        """Claim a slot on the best node, or say why not: NO_NODE, UNAVAILABLE or ALL_BUSY."""
        with self._lock:
            eligible = self._candidates(fleet, req, now)
            chosen = self._affinity_choice(fleet, eligible, req) or self._least_loaded(eligible)
            if chosen is None:
                return self._refusal(fleet, req, eligible)
            self._in_flight[chosen.node_id] = self._in_flight.get(chosen.node_id, 0) + 1
            return Decision(Claim(chosen.node_id, chosen.address))

    def _rank(self, n: NodeSnapshot) -> tuple[bool, float, int, str]:
        throttled = n.load is not None and n.load.throttled
        queue = n.load.queue_depth if n.load is not None else 0
        return throttled, self._in_flight.get(n.node_id, 0) / max(1, self.capacity(n)), queue, n.node_id

    def _has_room(self, n: NodeSnapshot) -> bool:
        return self._in_flight.get(n.node_id, 0) < self.capacity(n)

    def _least_loaded(self, eligible: list[NodeSnapshot]) -> NodeSnapshot | None:
        """The least `_rank` among the eligible nodes with a free slot (capacity inlined), or None."""
        in_flight, unknown = self._in_flight, self.policy.slots_when_unknown
        most = self.policy.max_slots_per_node
        best: NodeSnapshot | None = None
        best_key: tuple[bool, float, int, str] | None = None
        for n in eligible:
            load = n.load
            usable = load.slots_available if load is not None else unknown
            if 0 < n.slot_cap < usable:
                usable = n.slot_cap
            if 0 < most < usable:
                usable = most
            busy = in_flight.get(n.node_id, 0)
            if busy >= usable:
                continue
            if load is None:
                key = (False, busy / usable, 0, n.node_id)
            else:
                key = (load.throttled, busy / usable, load.queue_depth, n.node_id)
            if best_key is None or key < best_key:
                best, best_key = n, key
        return best

    def _affinity_choice(
        self, fleet: FleetSnapshot, eligible: list[NodeSnapshot], req: RouteRequest
    ) -> NodeSnapshot | None:
        """The key's home (the eligible node of highest rendezvous weight) when it has a free slot."""
        if not self.policy.affinity or not req.affinity_key or not eligible:
            return None
        home = self._homes.home(req.affinity_key, eligible, fleet.nodes)
        return home if self._has_room(home) else None

    def _refusal(self, fleet: FleetSnapshot, req: RouteRequest, eligible: list[NodeSnapshot]) -> Decision:
        if eligible:
            return Decision(None, ErrorCode.ALL_BUSY, f"every node that can serve {req.describe()} is busy")
        gap = unserved(fleet, req)
        if gap is not None:
            return Decision(None, ErrorCode.NO_NODE, gap[1], gap[0])
        tried = f" ({len(req.exclude)} tried)" if req.exclude else ""
        return Decision(None, ErrorCode.UNAVAILABLE, f"no node can take {req.describe()} now{tried}")


def unserved(fleet: FleetSnapshot, req: RouteRequest) -> tuple[str, str] | None:
    """(param, message) for the first need of the request that no node of the fleet has, in any
    state (model, then adapter, template, collection with that model, then node, group), or None."""
    if req.node and fleet.node(req.node) is None:
        return "node", f"no node {req.node!r} in the fleet"
    nodes = list(fleet.nodes.values())
    if req.model:
        named = [n for n in nodes if n.model == req.model]
        if not named:
            return "model", f"the model {req.model!r} does not exist: no node serves it (see GET /v1/models)"
        nodes = [n for n in named if serves_model(n, req.model)]
        if not nodes:
            return "model", (
                f"no node serves the model {req.model!r} the site knows: {len(named)} node(s) name it with "
                "another model file (sha256; see the orchestrator's log)"
            )
    names = [name for name, _ in req._needs()]
    for i, (param, value) in enumerate(req._needs()[1:], 1):
        before, so_far = req.keeping(names[:i]), req.keeping(names[: i + 1])
        if not value or any(serves(n, so_far) for n in nodes):
            continue
        if param == "node":
            return param, f"the node {value!r} does not serve {before.describe()}"
        if param == "group":
            return param, f"no node in the group {value!r} serves {before.describe()}"
        with_model = f"with model {req.model!r} " if req.model else "of the fleet "
        return param, f"no node {with_model}has the {param} {value!r}"
    return None
