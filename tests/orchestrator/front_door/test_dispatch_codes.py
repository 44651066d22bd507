"""The front door decides failover, draining and cooldowns on a node's ErrorCode, never its words:
the dispatcher with a real fleet view, router, slot queue and metrics (no node is called)."""

from __future__ import annotations

import time

import pytest

from edgefleet.orchestrator.fleet_view import FleetView
from edgefleet.orchestrator.front_door.dispatch import Dispatcher, DispatchPolicy, FrontDoorError, NodeFailure
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics
from edgefleet.orchestrator.front_door.router import Claim, Router, RouteRequest, RoutingPolicy
from edgefleet.orchestrator.front_door.slot_queue import SlotQueue
from edgefleet.orchestrator.front_door.upstream import NodeChannels
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus

WORDS = "node is draining for shutdown; send the request to another node"  # the words decide nothing


def dispatcher(*node_ids: str) -> Dispatcher:
    view = FleetView()
    for i, node_id in enumerate(node_ids):
        info = NodeInfoPayload(
            profile="x86-dev", groups=["lab"], model=ModelRef(name="smol", quantization="Q4_1"),
            grpc_address=f"10.0.0.{i + 1}:50051",
        )  # fmt: skip
        view.apply_status(NodeStatus(node_id=node_id, state="online", info=info))
    router = Router(RoutingPolicy(cooldown_failures=2))
    metrics = FrontDoorMetrics()
    slots = SlotQueue(router, view.snapshot, metrics, buffer_size=1, max_wait_s=0.1)
    return Dispatcher(view, router, slots, NodeChannels(), metrics, DispatchPolicy(max_attempts=3))


def fail(d: Dispatcher, node_id: str, code: ErrorCode, words: str, tried: set[str]) -> None:
    claim = Claim(node_id, d.view.snapshot().nodes[node_id].address)
    d.give_up_or_retry("grpc", claim, NodeFailure(code, words, code.value), tried, "rid", time.monotonic() + 60)


def routed_to(d: Dispatcher, node_id: str) -> bool:
    decision = d.router.claim(d.view.snapshot(), RouteRequest(node=node_id), time.time())
    if decision.claim is not None:
        d.router.release(decision.claim)
    return decision.claim is not None


def cooldowns(d: Dispatcher, node_id: str) -> float:
    return d.metrics.cooldowns.labels(node_id)._value.get()  # type: ignore[no-any-return]


def test_draining_takes_the_node_out_of_rotation_at_once_without_a_cooldown() -> None:
    d = dispatcher("a", "b")
    tried: set[str] = set()
    fail(d, "a", ErrorCode.DRAINING, "", tried)  # no words at all: the code says it
    assert tried == {"a"}, "failed over"
    assert not routed_to(d, "a") and routed_to(d, "b")
    assert cooldowns(d, "a") == 0 and not d.router.cooling("a", time.time())


def test_the_words_draining_without_the_code_are_an_ordinary_failure() -> None:
    d = dispatcher("a", "b")
    fail(d, "a", ErrorCode.UNAVAILABLE, WORDS, set())
    assert routed_to(d, "a"), "one UNAVAILABLE is counted, not taken for draining"
    fail(d, "a", ErrorCode.UNAVAILABLE, WORDS, set())
    assert d.router.cooling("a", time.time()) and cooldowns(d, "a") == 1


def test_a_code_that_another_node_would_repeat_ends_the_request_with_that_code() -> None:
    d = dispatcher("a", "b")
    tried: set[str] = set()
    for code in (ErrorCode.INVALID_REQUEST, ErrorCode.CONTEXT_OVERFLOW, ErrorCode.NOT_FOUND):
        with pytest.raises(FrontDoorError) as e:
            fail(d, "a", code, "bad", tried)
        assert e.value.code == code and e.value.node == "a"
    assert tried == set() and routed_to(d, "a")


def test_after_max_attempts_the_last_code_is_returned() -> None:
    d = dispatcher("a", "b", "c")
    tried: set[str] = set()
    fail(d, "a", ErrorCode.QUEUE_FULL, "busy", tried)
    fail(d, "b", ErrorCode.ENGINE_FAILURE, "decode failed", tried)
    with pytest.raises(FrontDoorError) as e:
        fail(d, "c", ErrorCode.DRAINING, "", tried)
    assert e.value.code == ErrorCode.DRAINING and tried == {"a", "b", "c"}
