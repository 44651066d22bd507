"""Hostile and failing MQTT input on a real node with a real Mosquitto: the node reports, counts, keeps serving.

- ad-hoc requests whose response topic has a wildcard (once a crash of the engine thread), oversized
  correlation data, too many user properties: refused with an error report, nothing else happens;
- a handler that raises (fail point `sensors.intake`, once): an error report, the telemetry
  counter, and the message is taken again by itself;
- JSON nested 100,000 levels deep in a sensor payload, a desired state, a request: refused;
- a topic level too long to be a template variable: an error result.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.proto.payloads import DesiredState, Target, TemplateSpec
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto, Watcher, node_env

NODE = "mq1"
TOPICS = Topics.for_site("lab")
DEEP = b"[" * 100_000 + b"]" * 100_000


def desired_doc(generation: int) -> DesiredState:
    return DesiredState(
        site="lab",
        target=Target(kind="node", name=NODE),
        generation=generation,
        templates={
            "ask": TemplateSpec(
                name="ask", version="1", template="Is {{ v }} at {{ where }} OK?", variables=["v", "where"]
            )
        },
        rules={
            "probe": RuleSpec(
                name="probe",
                version="1",
                topic_filter="probe/+/reading",
                template="ask",
                variables={"v": "payload.v", "where": "topic[1]"},
                max_tokens=2,
            )
        },
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("mqfaults")
    broker = Mosquitto(tmp)
    w = Watcher(broker, "edgefleet/lab/#")
    answers = Watcher(broker, "answers/#")
    w.publish(TOPICS.desired_node(NODE), site_identity.site().signed(desired_doc(1)), retain=True)
    node = NodeProcess(
        tmp, node_id=NODE, env=node_env(broker, EDGEFLEET_FAILPOINTS="sensors.intake=raise-once-after:0")
    )
    try:
        node.wait_serving()
        assert wait_for(
            lambda: any(t == TOPICS.node_reported(NODE) and b'"node:mq1":1' in p for t, p in w.messages), timeout=15
        )
        yield {"node": node, "w": w, "answers": answers, "broker": broker}
    finally:
        node.stop()
        w.close()
        answers.close()
        broker.stop()


def errors(w: Watcher) -> list[dict[str, Any]]:
    return w.on(TOPICS.errors(NODE))


def results(w: Watcher) -> list[dict[str, Any]]:
    return w.on(TOPICS.results(NODE), prefix=True)


def telemetry(w: Watcher) -> list[dict[str, Any]]:
    return w.on(TOPICS.node_telemetry(NODE))


def request(
    w: Watcher,
    response_topic: str | None,
    payload: bytes,
    correlation: bytes | None = None,
    user: list[tuple[str, str]] | None = None,
) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    for kv in user or []:
        props.UserProperty = kv
    w.client.publish(TOPICS.node_requests(NODE), payload, qos=1, properties=props).wait_for_publish(5)


def serving(node: NodeProcess) -> bool:
    health = health_pb2_grpc.HealthStub(node.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def still_works(node: NodeProcess) -> None:
    assert node.proc.poll() is None
    assert serving(node)
    _, last, _ = collect(node.stub.Generate(pb.GenerateRequest(prompt="Hi", max_tokens=3), timeout=30))
    assert last.usage.completion_tokens >= 1


ASK = json.dumps({"v": 1, "prompt": "Say hi", "max_tokens": 2}).encode()


def test_wildcard_response_topics_are_refused_and_the_node_keeps_serving(env: dict[str, Any]) -> None:
    w, node = env["w"], env["node"]
    ok = {"v": 1, "prompt": "Say hi", "max_tokens": 2}
    for topic in ("resp/#", "a/+/b", "resp/+", "#"):
        request(w, topic, json.dumps(ok).encode(), correlation=b"c1")
    assert wait_for(lambda: sum(e["code"] == "bad_response_target" for e in errors(w)) >= 4, timeout=10), errors(w)
    assert any("wildcard" in e["message"] for e in errors(w))
    still_works(node)
    # A good request still gets its answer, with its correlation data.
    request(w, "answers/one", json.dumps(ok).encode(), correlation=b"good")

    def answer() -> bytes | None:  # other tests of the module answer on answers/… too, in any order
        return next((p for t, p in env["answers"].messages if t == "answers/one"), None)

    assert wait_for(lambda: answer() is not None, timeout=20)
    assert json.loads(answer() or b"{}")["ok"]


def test_oversized_correlation_and_user_properties_are_refused(env: dict[str, Any]) -> None:
    w, node = env["w"], env["node"]
    n = len(errors(w))
    request(w, "answers/two", ASK, correlation=b"x" * 1000)
    request(w, "answers/three", ASK, user=[(f"k{i}", "v") for i in range(200)])
    request(w, "answers/four", ASK, user=[("k", "v" * 20_000)])
    assert wait_for(lambda: len(errors(w)) >= n + 3, timeout=10), errors(w)[n:]
    codes = [e["code"] for e in errors(w)[n:]]
    assert codes.count("bad_response_target") >= 1 and codes.count("bad_properties") >= 2, codes
    still_works(node)


def test_a_raising_handler_is_reported_counted_and_retried(env: dict[str, Any]) -> None:
    w = env["w"]
    w.publish("probe/p1/reading", json.dumps({"id": "fp-1", "v": 3}).encode())
    assert wait_for(lambda: any(e["code"] == "handler_error" for e in errors(w)), timeout=10), errors(w)
    assert wait_for(lambda: any(t.get("handler_errors", 0) >= 1 for t in telemetry(w)), timeout=10)
    assert wait_for(lambda: any(r["source_id"] == "fp-1" for r in results(w)), timeout=20), results(w)
    assert next(r for r in results(w) if r["source_id"] == "fp-1")["ok"]


def test_hostile_json_and_topic_levels_are_refused(env: dict[str, Any]) -> None:
    w, node = env["w"], env["node"]
    # A sensor payload 30,000 levels deep (within the rule's 64 KiB): an error result, not a crash.
    w.publish("probe/p2/reading", b'{"id": "deep-1", "v": ' + b"[" * 30_000 + b"]" * 30_000 + b"}")
    # A topic level too long to be a variable.
    w.publish(f"probe/{'x' * 5000}/reading", json.dumps({"id": "long-1", "v": 1}).encode())
    assert wait_for(
        lambda: {"invalid_json", "bad_topic_level"} <= {r.get("error_code") for r in results(w)}, timeout=20
    ), results(w)
    # Desired state and an ad-hoc request 100k levels deep: refused with a report.
    n = len(errors(w))
    w.publish(TOPICS.desired_node(NODE), b'{"v": 1, "site": "lab", "x": ' + DEEP + b"}", retain=False)
    request(w, f"answers/{uuid.uuid4().hex[:6]}", b'{"v": 1, "prompt": ' + DEEP + b"}", correlation=b"d")
    assert wait_for(lambda: sum(e["code"] == "invalid_payload" for e in errors(w)[n:]) >= 1, timeout=10), errors(w)[n:]
    assert wait_for(lambda: any(b'"invalid_payload"' in p for _, p in env["answers"].messages), timeout=10)
    still_works(node)
