"""The router's fast decision (one pass, rendezvous orders kept per affinity key) decides exactly as
the policy reads in plain words: the same claims and refusals, step by step, on random fleets and
random request sequences, with claims, releases, failures, draining and nodes joining between them.

`Plain` is the decision written the simple way (every eligible node checked with `routable` and
`serves`, the free ones ranked with `min`, the home with `max` over rendezvous weights): what the
router did before it was made fast (bench/router_bench.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from types import MappingProxyType

import pytest

from edgefleet.orchestrator.fleet_view import FleetSnapshot, NodeLoad, NodeSnapshot
from edgefleet.orchestrator.front_door.router import (
    Claim,
    Decision,
    Router,
    RouteRequest,
    RoutingPolicy,
    _Homes,
    rendezvous_weight,
    routable,
    serves,
)
from edgefleet.proto.error_codes import ErrorCode

NOW = 1000.0
KEYS = ["", "t:triage", "t:fault", "s:You are terse."]


class Plain(Router):
    def candidates(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> list[NodeSnapshot]:
        with self._lock:
            return self._plain(fleet, req, now)

    def _plain(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> list[NodeSnapshot]:
        out = []
        for n in fleet.nodes.values():
            h = self._health.get(n.node_id)
            if n.node_id in req.exclude or (h is not None and h.cooled_until > now) or self._is_draining(n):
                continue
            if routable(n) and serves(n, req):
                out.append(n)
        return out

    def claim(self, fleet: FleetSnapshot, req: RouteRequest, now: float) -> Decision:
        with self._lock:
            eligible = self._plain(fleet, req, now)
            free = [n for n in eligible if self._in_flight.get(n.node_id, 0) < self.capacity(n)]
            if not free:
                return self._refusal(fleet, req, eligible)
            chosen = None
            if self.policy.affinity and req.affinity_key:
                home = max(eligible, key=lambda n: rendezvous_weight(req.affinity_key, n.node_id))
                chosen = home if home in free else None
            chosen = chosen or min(free, key=self._rank)
            self._in_flight[chosen.node_id] = self._in_flight.get(chosen.node_id, 0) + 1
            return Decision(Claim(chosen.node_id, chosen.address))


def random_node(rng: random.Random) -> dict[str, object]:
    return dict(
        state=rng.choice(["online"] * 6 + ["offline", "failed"]),
        model=rng.choice(["smol", "smol", "qwen"]),
        verified=rng.random() > 0.1,
        slots=rng.choice([None, 0, 1, 2, 4, 8]),
        cap=rng.choice([0, 1, 2, 4]),
        throttled=rng.random() < 0.3,
        shedding=rng.random() < 0.1,
        queue=rng.randint(0, 3),
        group=rng.choice(["line", "yard"]),
        adapter=rng.choice(["", "pirate"]),
        address=rng.choice(["10.0.0.1:50051"] * 9 + [""]),
    )


DEFAULT: dict[str, object] = dict(
    state="online",
    model="smol",
    verified=True,
    slots=2,
    cap=0,
    throttled=False,
    shedding=False,
    queue=0,
    group="line",
    adapter="",
    address="10.0.0.1:50051",
)


def snapshot(i: int, f: dict[str, object], since: float = 1.0) -> NodeSnapshot:
    slots = f["slots"]
    load = None
    if slots is not None:
        load = NodeLoad(NOW, f["queue"], slots, 0, slots, None, None, f["throttled"], f["shedding"])
    return NodeSnapshot(
        node_id=f"n{i:03d}",
        state=f["state"],
        state_reason="",
        since=since,
        last_seen=NOW,
        address=f["address"],
        model=f["model"],
        groups=(f["group"],),
        adapters=MappingProxyType({f["adapter"]: "1"} if f["adapter"] else {}),
        load=load,
        slot_cap=f["cap"],
        model_verified=f["verified"],
    )


def fleet_of(nodes: list[NodeSnapshot]) -> FleetSnapshot:
    return FleetSnapshot(MappingProxyType({n.node_id: n for n in nodes}), MappingProxyType({}), 1, NOW)


def random_request(rng: random.Random) -> RouteRequest:
    return RouteRequest(
        model=rng.choice(["", "", "smol", "smol", "qwen", "ghost"]),
        adapter=rng.choice(["", "", "", "", "pirate"]),
        group=rng.choice(["", "", "", "", "", "line", "nowhere"]),
        node=rng.choice([""] * 20 + ["n001", "n999"]),
        affinity_key=rng.choice(KEYS),
        exclude=frozenset(rng.sample(["n000", "n001", "n002", "n040"], rng.choice([0, 0, 0, 1, 2]))),
    )


@pytest.mark.parametrize("seed", range(30))
def test_the_fast_decision_is_the_plain_one(seed: int) -> None:
    """300 random steps on a random fleet of up to 120 nodes: claims (most), releases, failures
    (cooldowns), draining, restarts (a new `since`), nodes joining; every decision the same."""
    rng = random.Random(seed)
    policy = RoutingPolicy(
        affinity=rng.random() < 0.7, max_slots_per_node=rng.choice([0, 0, 1, 3]), cooldown_failures=2
    )
    fast, plain = Router(policy), Plain(policy)
    nodes = [snapshot(i, random_node(rng)) for i in range(rng.choice([0, 5, 40, 80, 120]))]
    claims: list[Claim] = []
    now = NOW
    for _ in range(300):
        now += 0.5
        op = rng.choice(["claim"] * 12 + ["release"] * 5 + ["fail", "drain", "join", "restart"])
        current = fleet_of(nodes)
        if op == "claim":
            req = random_request(rng)
            assert fast.candidates(current, req, now) == plain.candidates(current, req, now)
            got, want = fast.claim(current, req, now), plain.claim(current, req, now)
            assert got == want, (req, got, want)
            if got.claim is not None:
                claims.append(got.claim)
        elif op == "release" and claims:
            c = claims.pop(rng.randrange(len(claims)))
            fast.release(c)
            plain.release(c)
        elif op == "fail" and nodes:
            node_id = rng.choice(nodes).node_id
            assert fast.failed(node_id, now) == plain.failed(node_id, now)
        elif op == "drain" and nodes:
            n = rng.choice(nodes)
            fast.draining(n)
            plain.draining(n)
        elif op == "join":
            nodes.append(snapshot(len(nodes), random_node(rng)))
        elif op == "restart" and nodes:
            i = rng.randrange(len(nodes))
            nodes[i] = replace(nodes[i], since=nodes[i].since + 1)


def test_a_key_seen_again_keeps_its_order_and_a_node_that_joins_renews_it() -> None:
    homes = _Homes()
    nodes = [snapshot(i, {**DEFAULT}) for i in range(100)]
    key = "t:triage"
    want = max(nodes, key=lambda n: rendezvous_weight(key, n.node_id))
    ids = [n.node_id for n in nodes]
    assert homes.home(key, nodes, ids) is want and key not in homes._orders, "seen once: weighed directly"
    assert homes.home(key, nodes, ids) is want and key in homes._orders, "seen again: its order kept"
    without = [n for n in nodes if n is not want]
    second = max(without, key=lambda n: rendezvous_weight(key, n.node_id))
    assert homes.home(key, without, ids) is second, "the home gone: the next in its order"
    joined = [*nodes, snapshot(100, {**DEFAULT})]
    want = max(joined, key=lambda n: rendezvous_weight(key, n.node_id))
    assert homes.home(key, joined, [n.node_id for n in joined]) is want
    assert "n100" in homes._covered


def test_refusals_are_unchanged_at_the_edges() -> None:
    r = Router(RoutingPolicy())
    empty = fleet_of([])
    assert r.claim(empty, RouteRequest(), NOW).refusal == ErrorCode.UNAVAILABLE
    assert r.claim(empty, RouteRequest(model="smol"), NOW).refusal == ErrorCode.NO_NODE
    one = fleet_of([snapshot(0, {**DEFAULT, "slots": 1})])
    assert r.claim(one, RouteRequest(affinity_key="t:x"), NOW).claim is not None
    assert r.claim(one, RouteRequest(affinity_key="t:x"), NOW).refusal == ErrorCode.ALL_BUSY
