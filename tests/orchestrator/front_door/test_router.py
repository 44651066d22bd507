"""The routing policy on scripted fleets: data in, data out, no processes."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

from hypothesis import given
from hypothesis import strategies as st

from edgefleet.orchestrator.fleet_view import FleetSnapshot, NodeLoad, NodeSnapshot
from edgefleet.orchestrator.front_door.router import Router, RouteRequest, RoutingPolicy
from edgefleet.proto.error_codes import ErrorCode

NOW = 1000.0


def node(
    node_id: str,
    *,
    state: str = "online",
    model: str = "smol",
    slots: int | None = 2,
    throttled: bool = False,
    shedding: bool = False,
    queue: int = 0,
    templates: dict[str, str] | None = None,
    adapters: dict[str, str] | None = None,
    collections: dict[str, str] | None = None,
    groups: tuple[str, ...] = ("lab",),
    since: float = 1.0,
) -> NodeSnapshot:
    load = None
    if slots is not None:
        load = NodeLoad(NOW, queue, slots, 0, slots, None, 60.0, throttled, shedding)
    return NodeSnapshot(
        node_id=node_id,
        state=state,  # type: ignore[arg-type]
        state_reason="",
        since=since,
        last_seen=NOW,
        address=f"10.0.0.{len(node_id)}:50051",
        model=model,
        groups=groups,
        templates=MappingProxyType(templates or {}),
        adapters=MappingProxyType(adapters or {}),
        collections=MappingProxyType(collections or {}),
        load=load,
    )


def fleet(*nodes: NodeSnapshot) -> FleetSnapshot:
    return FleetSnapshot(MappingProxyType({n.node_id: n for n in nodes}), MappingProxyType({}), 1, NOW)


def router(**policy: object) -> Router:
    return Router(RoutingPolicy(**policy))  # type: ignore[arg-type]


def test_eligibility_model_adapter_template_collection_state() -> None:
    f = fleet(
        node("a", templates={"fault": "1"}),
        node("b", adapters={"pirate": "2"}),
        node("c", collections={"manuals": "v1"}),
        node("d", state="offline", templates={"fault": "1"}),
        node("e", shedding=True, templates={"fault": "1"}),
        node("f", model="other"),
    )
    r = router()
    for req, expected in [
        (RouteRequest(template="fault"), "a"),
        (RouteRequest(adapter="pirate"), "b"),
        (RouteRequest(collection="manuals"), "c"),
        (RouteRequest(model="other"), "f"),
    ]:
        d = r.claim(f, req, NOW)
        assert d.claim is not None and d.claim.node_id == expected, req
        r.release(d.claim)
    assert r.claim(f, RouteRequest(template="nope"), NOW).refusal == ErrorCode.NO_NODE
    assert r.claim(f, RouteRequest(model="smol", node="f"), NOW).refusal == ErrorCode.NO_NODE
    only_offline = fleet(node("d", state="offline", templates={"fault": "1"}))
    assert r.claim(only_offline, RouteRequest(template="fault"), NOW).refusal == ErrorCode.UNAVAILABLE


def test_probed_adapters_and_collections_count() -> None:
    n = node("a")
    probed = NodeSnapshot(**{**n.__dict__, "served_adapters": frozenset({"x"}), "served_collections": frozenset({"k"})})
    d = router().claim(fleet(probed), RouteRequest(adapter="x", collection="k"), NOW)
    assert d.claim is not None


def test_least_loaded_first_then_full_then_freed() -> None:
    f = fleet(node("a"), node("b"))
    r = router()
    claims = [r.claim(f, RouteRequest(), NOW).claim for _ in range(4)]
    assert Counter(c.node_id for c in claims if c) == {"a": 2, "b": 2}
    full = r.claim(f, RouteRequest(), NOW)
    assert full.claim is None and full.refusal == ErrorCode.ALL_BUSY
    r.release(claims[1])  # type: ignore[arg-type]
    again = r.claim(f, RouteRequest(), NOW).claim
    assert again is not None and again.node_id == claims[1].node_id  # type: ignore[union-attr]


def test_below_throttle_before_above_and_capacity_caps() -> None:
    f = fleet(node("a", throttled=True, slots=4), node("b", slots=1))
    r = router(max_slots_per_node=3)
    assert r.claim(f, RouteRequest(), NOW).claim.node_id == "b"  # type: ignore[union-attr]
    got = Counter(r.claim(f, RouteRequest(), NOW).claim.node_id for _ in range(3))  # type: ignore[union-attr]
    assert got == {"a": 3}, "b is full; a takes at most max_slots_per_node"
    assert r.claim(f, RouteRequest(), NOW).refusal == ErrorCode.ALL_BUSY


def test_unknown_slots_use_the_policy_default() -> None:
    r = router(slots_when_unknown=1)
    f = fleet(node("a", slots=None))
    assert r.claim(f, RouteRequest(), NOW).claim is not None
    assert r.claim(f, RouteRequest(), NOW).refusal == ErrorCode.ALL_BUSY


def test_affinity_keeps_a_prefix_on_one_node_while_it_has_room() -> None:
    f = fleet(node("a", slots=8), node("b", slots=8), node("c", slots=8))
    r = router()
    homes = set()
    for _ in range(5):
        c = r.claim(f, RouteRequest(affinity_key="t:fault"), NOW).claim
        assert c is not None
        homes.add(c.node_id)
        r.release(c)
    assert len(homes) == 1
    home = homes.pop()
    held = [r.claim(f, RouteRequest(affinity_key="t:fault"), NOW).claim for _ in range(8)]
    assert {c.node_id for c in held if c} == {home}
    spill = r.claim(f, RouteRequest(affinity_key="t:fault"), NOW).claim
    assert spill is not None and spill.node_id != home, "a full home spills to the least loaded"
    off = router(affinity=False)
    spread = Counter(off.claim(f, RouteRequest(affinity_key="t:fault"), NOW).claim.node_id for _ in range(3))  # type: ignore[union-attr]
    assert len(spread) == 3


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4, unique=True), st.text(min_size=1))
def test_rendezvous_moves_a_key_only_when_its_home_leaves(ids: list[str], key: str) -> None:
    everyone = fleet(*(node(i) for i in ["a", "b", "c", "d"]))
    some = fleet(*(node(i) for i in ids))
    home = router().claim(everyone, RouteRequest(affinity_key=key), NOW).claim
    here = router().claim(some, RouteRequest(affinity_key=key), NOW).claim
    assert home is not None and here is not None
    if home.node_id in ids:
        assert here.node_id == home.node_id


def test_cooldown_after_repeated_failures_and_back_by_itself() -> None:
    f = fleet(node("a"), node("b"))
    r = router(cooldown_failures=2, cooldown_window_s=10, cooldown_s=5)
    assert not r.failed("a", NOW)
    assert r.failed("a", NOW + 1), "the second failure within the window cools it down"
    assert r.cooling_nodes(NOW + 2) == ["a"]
    picks = {r.claim(f, RouteRequest(), NOW + 2).claim.node_id for _ in range(2)}  # type: ignore[union-attr]
    assert picks == {"b"}
    assert r.claim(f, RouteRequest(), NOW + 2).refusal == ErrorCode.ALL_BUSY
    assert r.claim(f, RouteRequest(node="a"), NOW + 2).refusal == ErrorCode.UNAVAILABLE
    assert r.claim(f, RouteRequest(node="a"), NOW + 7).claim is not None, "back after the cooldown"
    assert not r.failed("b", NOW) and not r.failed("b", NOW + 20), "failures outside the window do not add up"


def test_draining_node_leaves_until_its_status_changes() -> None:
    a = node("a", since=1.0)
    r = router()
    r.draining(a)
    assert r.claim(fleet(a), RouteRequest(), NOW).refusal == ErrorCode.UNAVAILABLE
    restarted = node("a", since=2.0)
    assert r.claim(fleet(restarted), RouteRequest(), NOW).claim is not None


def test_pins_and_exclusions() -> None:
    f = fleet(node("a", groups=("x",)), node("b", groups=("y",)))
    r = router()
    assert r.claim(f, RouteRequest(group="y"), NOW).claim.node_id == "b"  # type: ignore[union-attr]
    assert r.claim(f, RouteRequest(node="a"), NOW).claim.node_id == "a"  # type: ignore[union-attr]
    assert r.claim(f, RouteRequest(exclude=frozenset({"a"})), NOW).claim.node_id == "b"  # type: ignore[union-attr]
    assert r.claim(f, RouteRequest(node="zz"), NOW).refusal == ErrorCode.NO_NODE


def test_no_node_names_the_need_that_no_node_of_the_fleet_has() -> None:
    r = router()
    f = fleet(node("a", templates={"fault": "1"}, adapters={"pirate": "1"}), node("b", model="other", groups=("yard",)))
    cases = [
        (RouteRequest(model="nope"), "model", "nope"),
        (RouteRequest(model="smol", adapter="ghost"), "adapter", "ghost"),
        (RouteRequest(model="other", template="fault"), "template", "fault"),  # a has it, not with that model
        (RouteRequest(model="smol", collection="manuals"), "collection", "manuals"),
        (RouteRequest(node="zz"), "node", "zz"),
        (RouteRequest(model="other", node="a"), "node", "a"),
        (RouteRequest(model="smol", group="yard"), "group", "yard"),
    ]
    for req, param, value in cases:
        d = r.claim(f, req, NOW)
        assert d.refusal == ErrorCode.NO_NODE and d.param == param and repr(value) in d.message, (req, d)
    offline = fleet(node("a", state="offline", adapters={"pirate": "1"}))
    d = r.claim(offline, RouteRequest(model="smol", adapter="pirate"), NOW)
    assert d.refusal == ErrorCode.UNAVAILABLE and d.param == "", "it exists, only not now"
