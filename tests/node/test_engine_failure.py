"""A node whose engine dies says so and exits; a sink that raises fails one request only.

Faults come from named fail points (EDGEFLEET_FAILPOINTS) in a real node process, never mocks:
`engine.step` raises inside the engine thread's decode loop, `engine.emit` raises where an event
is handed to a request's sink.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import collect, wait_for
from tests.mqtt_support import Mosquitto, Watcher, node_env

EXIT_ENGINE_FAILED = 70  # documented in the README (node/api/server.py)
LONG = pb.GenerateRequest(prompt="Count: 1, 2, 3, 4, 5, 6, 7,", max_tokens=1500, temperature=0)


def _stream(stub, request, out: dict[str, object]) -> threading.Thread:  # type: ignore[no-untyped-def]
    """Read a stream in the background: out['chunks'] counts chunks, out['error'] is the RpcError."""
    out["chunks"] = 0

    def read() -> None:
        try:
            for _ in stub.Generate(request, timeout=60):
                out["chunks"] = int(out["chunks"]) + 1  # type: ignore[call-overload]
        except grpc.RpcError as e:
            out["error"] = e

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def _health(node) -> int:  # type: ignore[no-untyped-def]
    stub = health_pb2_grpc.HealthStub(node.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status


def test_an_engine_that_fails_ends_every_stream_says_so_and_exits(
    start_node, broker: Mosquitto, tmp_path: Path
) -> None:
    env = node_env(
        broker,
        EDGEFLEET_FAILPOINTS="engine.step=raise-after:60",
        EDGEFLEET_FAILURE_GRACE_S="4",
    )
    watcher = Watcher(broker, Topics.for_site("lab", "edgefleet/{site}/").node_status("doomed"))
    try:
        node = start_node(env=env, node_id="doomed")
        assert wait_for(lambda: any(m.get("state") == "online" for m in watcher.json()), timeout=10)
        outs: list[dict[str, object]] = [{}, {}]
        threads = [_stream(node.stub, LONG, o) for o in outs]
        for t in threads:
            t.join(30)
        for out in outs:
            err = out.get("error")
            assert isinstance(err, grpc.RpcError), f"the stream must fail, got {out}"
            assert err.code() == grpc.StatusCode.INTERNAL, err
            assert "engine failed" in err.details() and "fail point engine.step" in err.details()
        assert all(int(o["chunks"]) > 0 for o in outs), "both streams were in flight when the engine died"  # type: ignore[call-overload]

        # During the grace period: not serving, and new work is refused with the reason.
        assert _health(node) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            list(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "engine failed" in refused.value.details()
        with pytest.raises(grpc.RpcError) as embed_refused:
            node.stub.Embed(pb.EmbedRequest(texts=["hello"]), timeout=5)
        assert embed_refused.value.code() == grpc.StatusCode.UNAVAILABLE

        assert wait_for(lambda: any(m.get("state") == "failed" for m in watcher.json()), timeout=5)
        failed = next(m for m in watcher.json() if m.get("state") == "failed")
        assert "fail point engine.step" in failed["reason"]

        assert node.proc.wait(timeout=30) == EXIT_ENGINE_FAILED
        retained = Watcher(broker, Topics.for_site("lab", "edgefleet/{site}/").node_status("doomed"))
        try:
            assert wait_for(lambda: bool(retained.json()), timeout=5)
            assert retained.json()[-1]["state"] == "failed", "the last word stays `failed`, not `offline`"
        finally:
            retained.close()
        log = node.log()
        assert log.count("Traceback (most recent call last)") == 1, "the traceback is logged once"
        assert "FailPointError" in log
    finally:
        watcher.close()


def test_a_sink_that_raises_fails_its_request_and_not_the_engine(start_node) -> None:
    node = start_node(env={"EDGEFLEET_FAILPOINTS": "engine.emit=raise-once-after:5"})
    with pytest.raises(grpc.RpcError) as err:
        collect(node.stub.Generate(pb.GenerateRequest(prompt="Count: 1, 2, 3,", max_tokens=40, temperature=0)))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "could not be delivered" in err.value.details()
    info = node.info()
    assert info.status == "serving" and info.slots_busy == 0 and info.queue_depth == 0, "its slot is free again"
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="Count: 1, 2, 3,", max_tokens=8)))
    assert last.finish_reason == pb.FINISH_REASON_LENGTH and last.usage.completion_tokens == 8
    assert _health(node) == health_pb2.HealthCheckResponse.SERVING
    assert node.proc.poll() is None


def test_a_wrong_failpoint_setting_stops_the_node_at_start(start_node, tmp_path: Path) -> None:
    node = start_node(env={"EDGEFLEET_FAILPOINTS": "engine.step=explode"}, wait=False)
    assert node.proc.wait(timeout=60) == 2
    assert "unknown action 'explode'" in node.log()


def test_status_json_names_the_failed_state(tmp_path: Path) -> None:
    """The contract carries `failed` with its reason (the orchestrator and console read it)."""
    from edgefleet.proto.payloads import NodeStatus, parse_payload

    doc = NodeStatus(node_id="n1", state="failed", reason="engine failed: boom").dumps()
    back = parse_payload(NodeStatus, doc)
    assert back.state == "failed" and json.loads(doc)["reason"] == "engine failed: boom"
