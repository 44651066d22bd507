"""The gRPC front door end to end: same contract as a node, routed over the fleet."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import collect, wait_for
from tests.orchestrator.front_door.conftest import Site

NODE = "x-edgefleet-node"


def generate(site: Site, max_tokens: int = 8, metadata: tuple = (), **fields: object) -> tuple[str, str, str]:
    """(text, node named in the initial metadata, node named in the trailing metadata)."""
    req = pb.GenerateRequest(max_tokens=max_tokens, temperature=0, **fields)  # type: ignore[arg-type]
    if not req.prompt and not req.messages and not req.template:
        req.prompt = "The capital of France is"
    call = site.stub.Generate(req, metadata=metadata, timeout=60)
    text = collect(call)[0]
    first = dict(call.initial_metadata())[NODE]
    last = dict(call.trailing_metadata())[NODE]
    return text, first, last


def test_generate_through_the_front_door_names_the_node_and_passes_the_request_id(site: Site) -> None:
    req = pb.GenerateRequest(prompt="Hello, my name is", max_tokens=6, temperature=0)
    call = site.stub.Generate(req, metadata=(("x-request-id", "fd-req-1"),), timeout=60)
    chunks = list(call)
    node = dict(call.initial_metadata())[NODE]
    assert node in ("fd-a", "fd-b")
    assert dict(call.trailing_metadata())[NODE] == node
    assert dict(call.initial_metadata())["x-request-id"] == "fd-req-1"
    assert all(c.request_id == "fd-req-1" for c in chunks), "the node saw the caller's request id"
    assert chunks[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert len(chunks) > 1, "chunk by chunk, not one buffered answer"
    direct = collect(site.nodes[node].stub.Generate(req, timeout=60))[0]
    assert "".join(c.text for c in chunks) == direct


def test_health_and_reflection(site: Site) -> None:
    health = health_pb2_grpc.HealthStub(site.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service="edgefleet.v1.Inference"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    refl = reflection_pb2_grpc.ServerReflectionStub(site.channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert "edgefleet.v1.Inference" in names


def test_node_local_methods_are_unimplemented(site: Site) -> None:
    with pytest.raises(grpc.RpcError) as e:
        site.stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert sent_code(e.value) == ErrorCode.NOT_IMPLEMENTED and "node's address" in e.value.details()


def test_pinned_node_and_group(site: Site) -> None:
    assert generate(site, metadata=((NODE, "fd-b"),))[1:] == ("fd-b", "fd-b")
    assert generate(site, metadata=(("x-edgefleet-group", "pair"),))[1] in ("fd-a", "fd-b")
    with pytest.raises(grpc.RpcError) as e:
        generate(site, metadata=(("x-edgefleet-group", "nobody"),))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert sent_code(e.value) == ErrorCode.NO_NODE and "'nobody'" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        generate(site, metadata=((NODE, "fd-nobody"),))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and sent_code(e.value) == ErrorCode.NO_NODE


def _concurrently(n: int, fn) -> list:  # type: ignore[no-untyped-def]
    out: list = [None] * n
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = fn(i)
        except grpc.RpcError as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_least_load_spreads_four_concurrent_requests_over_two_nodes(site: Site) -> None:
    served = _concurrently(4, lambda i: generate(site, max_tokens=32, prompt=f"Story number {i}:")[1])
    assert Counter(served) == {"fd-a": 2, "fd-b": 2}


COUNT = "Count from 1 to 1000: 1, 2, 3, 4,"


def _wait_for_gauge(site: Site, name: str, total: float, timeout: float = 60) -> None:
    """Polls the front door's /metrics until the gauge `name`, summed over its labels, reaches `total`."""
    deadline = time.monotonic() + timeout
    while True:
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in site.metrics().splitlines()
            if line.startswith((name + "{", name + " "))
        ]
        if sum(values) >= total:
            return
        assert time.monotonic() < deadline, f"{name} stayed at {sum(values)}, expected {total}"
        time.sleep(0.05)


def test_a_full_fleet_buffers_then_answers_resource_exhausted_and_429(site: Site) -> None:
    long_ones: list = []
    waiting: list = []
    t_long = threading.Thread(
        target=lambda: long_ones.extend(_concurrently(4, lambda i: generate(site, max_tokens=300, prompt=COUNT)))
    )
    t_long.start()
    _wait_for_gauge(site, "edgefleet_front_door_in_flight", 4)  # four slots claimed: the fleet (2 per node) is full
    t_wait = threading.Thread(target=lambda: waiting.extend(_concurrently(2, lambda i: generate(site, max_tokens=2))))
    t_wait.start()
    _wait_for_gauge(site, "edgefleet_front_door_buffer_depth", 2)  # two wait in the buffer (its size here)
    with pytest.raises(grpc.RpcError) as e:  # a full buffer refuses at once: no wait for a slot
        generate(site, max_tokens=2)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and sent_code(e.value) == ErrorCode.ALL_BUSY
    assert dict(e.value.trailing_metadata())["retry-after"] == "2"  # type: ignore[attr-defined]
    import urllib.error
    import urllib.request

    body = b'{"model": "%s", "prompt": "Hi", "max_tokens": 2}' % site.model().encode()
    with pytest.raises(urllib.error.HTTPError) as http:
        site_identity.site().urlopen(urllib.request.Request(site.http + "/v1/completions", body))
    assert http.value.code == 429 and http.value.headers["Retry-After"] == "2"
    t_wait.join(60)
    t_long.join(120)
    assert all(isinstance(r, tuple) for r in long_ones)
    for r in waiting:  # each either got the next free slot or was refused when its wait ran out
        assert isinstance(r, tuple) or r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert generate(site)[1] in ("fd-a", "fd-b"), "it keeps serving"


def test_template_goes_only_to_the_node_that_has_it(site: Site) -> None:
    from tests.mqtt_support import fleet

    f = site.tmp / "greet.j2"
    f.write_text("Greet {{ who }} in one word.")
    r = fleet(site.broker, "fleet", "push-template", str(f), "--name", "greet", "--version", "1",
              "--target", "node:fd-a", "--system", "You are terse.")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: _unless_not_found(lambda: generate(site, template="greet", variables={"who": "Ada"})),
                    timeout=20, interval=0.2)  # fmt: skip
    served = _concurrently(4, lambda i: generate(site, max_tokens=4, template="greet", variables={"who": f"n{i}"})[1])
    assert set(served) == {"fd-a"}


def test_collection_ingested_on_one_node_routes_there(site: Site) -> None:
    doc = pb.Document(id="pump", text="# Pump P-3\nThe pump P-3 needs fresh oil every 200 hours of running.")
    site.nodes["fd-b"].stub.Ingest(pb.IngestRequest(collection="manuals", documents=[doc]), timeout=60)
    retrieve = lambda: site.stub.Retrieve.with_call(  # noqa: E731
        pb.RetrieveRequest(query="pump oil", collection="manuals"), timeout=30
    )
    calls: list[Any] = []
    assert wait_for(lambda: calls.append(_unless_not_found(retrieve)) or calls[-1], timeout=20, interval=0.2)
    resp, rpc = calls[-1]
    assert resp.chunks and dict(rpc.initial_metadata())[NODE] == "fd-b"
    for _ in range(2):
        req = pb.GenerateRequest(
            prompt="How often does P-3 need oil?", max_tokens=8, retrieval=pb.Retrieval(collection="manuals")
        )
        stream = site.stub.Generate(req, timeout=60)
        last = collect(stream)[1]
        assert dict(stream.initial_metadata())[NODE] == "fd-b" and list(last.source_chunk_ids)


def _unless_not_found(call: Any) -> Any:
    """`call()`'s answer, or None while the front door answers NOT_FOUND (it has not learnt the route yet);
    any other error is raised."""
    try:
        return call() or True
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
