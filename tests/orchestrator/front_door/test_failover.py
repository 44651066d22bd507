"""Failover, errors after the first token, offline nodes: real node processes that fail for real
(fail points compiled into the engine, SIGKILL), beside the shared pair."""

from __future__ import annotations

import time

import grpc
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import collect, wait_for
from tests.orchestrator.front_door.conftest import Site

NODE = "x-edgefleet-node"


def counter(site: Site, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(site.metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_failure_before_the_first_token_fails_over_to_another_node(site: Site) -> None:
    # "aa-" sorts first: with every node idle it is the router's first pick; its engine dies on its first step
    flaky = site.start_node("aa-flaky", EDGEFLEET_FAILPOINTS="engine.step=raise")
    site.wait_routable("aa-flaky", "fd-a", "fd-b")
    before = counter(site, "edgefleet_front_door_failovers_total", node="aa-flaky")
    req = pb.GenerateRequest(prompt="The sky is", max_tokens=6, temperature=0)
    call = site.stub.Generate(req, metadata=(("x-request-id", "fo-1"),), timeout=60)
    _, last, _ = collect(call)
    served = dict(call.initial_metadata())[NODE]
    assert served in ("fd-a", "fd-b") and last.finish_reason
    assert counter(site, "edgefleet_front_door_failovers_total", node="aa-flaky") == before + 1
    assert "failing over before the first token" in site.orchestrator_log()
    assert any("fo-1" in line and "failing over" in line for line in site.orchestrator_log().splitlines())
    assert wait_for(lambda: flaky.proc.poll() is not None, timeout=30), "its engine failed: the node exits"


def test_an_error_after_the_first_token_names_the_node(site: Site) -> None:
    site.start_node("ab-dying", EDGEFLEET_FAILPOINTS="engine.step=raise-after:6")
    site.wait_routable("ab-dying")
    req = pb.GenerateRequest(prompt="Count: 1, 2, 3,", max_tokens=64, temperature=0)
    call = site.stub.Generate(req, metadata=((NODE, "ab-dying"),), timeout=60)
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for chunk in call:
            got.append(chunk.text)
    assert "".join(got), "some text came first"
    assert "ab-dying" in (e.value.details() or "")
    assert dict(e.value.trailing_metadata())[NODE] == "ab-dying"  # type: ignore[attr-defined]


def test_an_http_stream_that_breaks_after_the_first_token_names_the_node(site: Site) -> None:
    site.start_node("ac-dying", EDGEFLEET_FAILPOINTS="engine.step=raise-after:6")
    site.wait_routable("ac-dying")
    client = site_identity.site().openai(site.http + "/v1")
    stream = client.completions.create(
        model=site.model(), prompt="Count: 1, 2, 3,", max_tokens=64, stream=True, extra_headers={NODE: "ac-dying"}
    )
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "ac-dying" in str(e.value)


def test_a_killed_node_leaves_the_rotation_and_gets_no_traffic(site: Site) -> None:
    gone = site.start_node("ad-gone")
    site.wait_routable("ad-gone")
    gone.kill()
    assert wait_for(lambda: not any("ad-gone" in n for n in site.serving().values()), timeout=10)
    served = set()
    for i in range(4):
        call = site.stub.Generate(pb.GenerateRequest(prompt=f"Item {i}:", max_tokens=3), timeout=60)
        collect(call)
        served.add(dict(call.initial_metadata())[NODE])
    assert served <= {"fd-a", "fd-b"}
    with pytest.raises(grpc.RpcError) as e:
        collect(
            site.stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=2), metadata=((NODE, "ad-gone"),), timeout=10)
        )
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_node_killed_before_the_fleet_view_knows_is_failed_over(site: Site) -> None:
    # the will and the next request race: whichever wins, the caller gets an answer from another node
    doomed = site.start_node("ae-doomed")
    site.wait_routable("ae-doomed")
    doomed.kill()
    started = time.monotonic()
    call = site.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=3), timeout=60)
    collect(call)
    assert dict(call.initial_metadata())[NODE] in ("fd-a", "fd-b")
    assert time.monotonic() - started < 10
