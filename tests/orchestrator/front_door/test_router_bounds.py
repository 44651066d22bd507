"""What a node says about itself is bounded before the router believes it: slots by its firmware
profile, its model by the hash the site knows, and the router's own books (in flight, failures)
outweigh what it announces. Pure: real payloads into a real fleet view, the router on its snapshots."""

from __future__ import annotations

import logging
from types import MappingProxyType

import pytest

from edgefleet.orchestrator.fleet_view import FleetSnapshot, FleetView, NodeSnapshot
from edgefleet.orchestrator.front_door.router import Router, RouteRequest, RoutingPolicy
from edgefleet.orchestrator.node_claims import SlotCaps, shipped_slot_caps
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, Telemetry

NOW = 1000.0
H1, H2 = "1" * 64, "2" * 64


def status(node_id: str, profile: str = "x86-dev", model: str = "smol", sha: str = H1, ts: float = 1.0) -> NodeStatus:
    info = NodeInfoPayload(
        profile=profile, groups=[profile], model=ModelRef(name=model, sha256=sha), grpc_address="10.0.0.9:50051"
    )
    return NodeStatus(node_id=node_id, state="online", info=info, ts=ts)


def telemetry(node_id: str, slots: int, busy: int = 0) -> Telemetry:
    return Telemetry(
        node_id=node_id,
        queue_depth=0,
        slots_busy=busy,
        slots_total=slots,
        slots_available=slots,
        tokens_per_second=0.0,
        temperature_c=None,
        throttled=False,
        shedding=False,
        rss_bytes=0,
    )


def claims(r: Router, view: FleetView, req: RouteRequest, n: int = 100) -> list[str]:
    """Claim until refused (at most n); the nodes claimed, in order."""
    got = []
    for _ in range(n):
        d = r.claim(view.snapshot(), req, NOW)
        if d.claim is None:
            assert d.refusal == ErrorCode.ALL_BUSY, d
            break
        got.append(d.claim.node_id)
    return got


def fleet_of(*nodes: NodeSnapshot) -> FleetSnapshot:
    return FleetSnapshot(MappingProxyType({n.node_id: n for n in nodes}), MappingProxyType({}), 1, NOW)


def cap_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "more slots than its profile allows" in r.getMessage()]


def test_the_shipped_profiles_set_the_caps_and_an_unknown_profile_gets_the_smallest() -> None:
    caps = shipped_slot_caps()
    assert caps.by_profile["x86-dev"] == 4 and caps.by_profile["rpi4-4gb"] == 2
    assert caps.by_profile["jetson-agx-orin-64gb"] == 16
    assert caps.unknown == min(caps.by_profile.values()) == 2
    assert caps.cap("a-board-of-its-own") == 2 and caps.cap("") == 2
    assert SlotCaps.of({}).cap("anything") == 1, "no profile read: one slot"


def test_64_free_slots_announced_by_a_4_slot_profile_get_4(caplog: pytest.LogCaptureFixture) -> None:
    view = FleetView()
    view.apply_status(status("liar", profile="x86-dev"))
    with caplog.at_level(logging.WARNING, logger="edgefleet.orchestrator.fleet_view"):
        view.apply_telemetry(telemetry("liar", 64))
        view.apply_telemetry(telemetry("liar", 64))
    snap = view.snapshot().node("liar")
    assert snap is not None and snap.slot_cap == 4 and snap.load is not None and snap.load.slots_available == 64
    r = Router(RoutingPolicy())
    assert r.capacity(snap) == 4
    assert claims(r, view, RouteRequest()) == ["liar"] * 4
    (warning,) = cap_warnings(caplog)  # once per node, with the figures
    assert (warning.node, warning.profile, warning.claimed_slots, warning.cap) == ("liar", "x86-dev", 64, 4)  # type: ignore[attr-defined]
    assert warning.profile_known is True  # type: ignore[attr-defined]


def test_an_unknown_profile_is_capped_at_the_smallest_shipped_profile(caplog: pytest.LogCaptureFixture) -> None:
    view = FleetView()
    view.apply_status(status("odd", profile="made-up-board"))
    with caplog.at_level(logging.WARNING, logger="edgefleet.orchestrator.fleet_view"):
        view.apply_telemetry(telemetry("odd", 64))
    assert claims(Router(RoutingPolicy()), view, RouteRequest()) == ["odd"] * 2
    (warning,) = cap_warnings(caplog)
    assert warning.profile_known is False and warning.cap == 2  # type: ignore[attr-defined]


def test_claims_within_the_cap_are_used_as_they_are_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    view = FleetView()
    view.apply_status(status("honest", profile="jetson-agx-orin-64gb"))
    with caplog.at_level(logging.WARNING, logger="edgefleet.orchestrator.fleet_view"):
        view.apply_telemetry(telemetry("honest", 3))
    assert claims(Router(RoutingPolicy()), view, RouteRequest()) == ["honest"] * 3
    assert claims(Router(RoutingPolicy(max_slots_per_node=2)), view, RouteRequest()) == ["honest"] * 2
    assert not cap_warnings(caplog)


def test_the_routers_own_in_flight_count_outweighs_announced_free_slots() -> None:
    """At its capped slots in the router's books, a node that says all its slots are free is not chosen."""
    view = FleetView()
    view.apply_status(status("a", profile="rpi4-4gb"))
    view.apply_telemetry(telemetry("a", 64))
    r = Router(RoutingPolicy())
    first, second = (r.claim(view.snapshot(), RouteRequest(), NOW).claim for _ in range(2))
    assert first is not None and second is not None
    view.apply_telemetry(telemetry("a", 64, busy=0))  # fresh telemetry: "nothing busy, 64 free"
    full = r.claim(view.snapshot(), RouteRequest(), NOW)
    assert full.claim is None and full.refusal == ErrorCode.ALL_BUSY
    r.release(first)
    again = r.claim(view.snapshot(), RouteRequest(), NOW).claim
    assert again is not None and again.node_id == "a"


def test_a_node_that_claims_healthy_but_keeps_failing_cools_down() -> None:
    """A fresh `online` status and telemetry with every slot free do not bring a failing node back
    before its cooldown is over: failures are the router's own observation."""
    view = FleetView()
    for n in ("a", "b"):
        view.apply_status(status(n))
        view.apply_telemetry(telemetry(n, 4))
    r = Router(RoutingPolicy(cooldown_failures=3, cooldown_window_s=30, cooldown_s=15))
    assert [r.failed("a", NOW + i) for i in range(3)] == [False, False, True]
    view.apply_status(status("a", ts=NOW + 3))  # "I am online" again: a new status
    view.apply_telemetry(telemetry("a", 64))  # "and every slot is free"
    assert set(claims(r, view, RouteRequest())) == {"b"}
    pinned = r.claim(view.snapshot(), RouteRequest(node="a"), NOW + 5)
    assert pinned.claim is None and pinned.refusal == ErrorCode.UNAVAILABLE
    assert r.claim(view.snapshot(), RouteRequest(node="a"), NOW + 18).claim is not None, "back after the cooldown"


def test_a_model_is_served_only_by_nodes_with_the_sites_hash_for_it(caplog: pytest.LogCaptureFixture) -> None:
    view = FleetView()
    view.apply_status(status("first", sha=H1))
    with caplog.at_level(logging.WARNING, logger="edgefleet.orchestrator.fleet_view"):
        view.apply_status(status("other", sha=H2))  # one against one: the hash seen first is the site's
        view.apply_status(status("other", sha=H2))
    snap = view.snapshot()
    assert snap.nodes["first"].model_verified and not snap.nodes["other"].model_verified
    r = Router(RoutingPolicy())
    assert set(claims(r, view, RouteRequest(model="smol"))) == {"first"}
    assert "other" in claims(Router(RoutingPolicy()), view, RouteRequest()), "no model asked: any node"
    mismatch = [x for x in caplog.records if "model file is not the site's" in x.getMessage()]
    assert len(mismatch) == 1 and mismatch[0].site_sha256 == H1  # type: ignore[attr-defined]
    # the node with the site's hash offline: the model is unavailable, not served by the other one
    view.apply_status(NodeStatus(node_id="first", state="offline", reason="shutdown"))
    assert Router(RoutingPolicy()).claim(view.snapshot(), RouteRequest(model="smol"), NOW).refusal == (
        ErrorCode.UNAVAILABLE
    )
    # a fleet whose nodes all name the model with another file: a clear NO_NODE naming the model
    only = view.snapshot().nodes["other"]
    d = Router(RoutingPolicy()).claim(fleet_of(only), RouteRequest(model="smol"), NOW)
    assert d.refusal == ErrorCode.NO_NODE and d.param == "model" and "another model file" in d.message


def test_most_nodes_decide_the_sites_hash_and_a_missing_hash_is_not_trusted_once_one_is_known() -> None:
    view = FleetView()
    view.apply_status(status("nohash", sha=""))
    assert view.snapshot().nodes["nohash"].model_verified, "the site knows no hash for the model yet"
    view.apply_status(status("a", sha=H1))
    for n in ("b", "c"):  # the site upgrades the file: two nodes report the new one
        view.apply_status(status(n, sha=H2))
    nodes = view.snapshot().nodes
    assert [n for n in sorted(nodes) if nodes[n].model_verified] == ["b", "c"]
    assert not nodes["nohash"].model_verified
    view.apply_status(status("a", sha=H2))  # restarted with the new file
    assert view.snapshot().nodes["a"].model_verified


def test_a_rebuilt_view_keeps_the_earliest_hash_on_a_tie() -> None:
    """After a restart the registry's records (any order) rebuild the same verdicts."""
    from edgefleet.orchestrator.registry import NodeRecord

    def record(node_id: str, sha: str, since: float) -> NodeRecord:
        s = status(node_id, sha=sha)
        return NodeRecord(node_id, "online", "", since, since, s.info, None, telemetry(node_id, 64))

    view = FleetView()
    view.rebuild([record("late", H2, 50.0), record("early", H1, 10.0)], {})
    nodes = view.snapshot().nodes
    assert nodes["early"].model_verified and not nodes["late"].model_verified
    assert nodes["late"].slot_cap == 4
