"""Sensor rules end to end: a real Mosquitto (persistence on), a real orchestrator, two real nodes.

Sensors publish JSON readings at QoS 1 from a separate client; results are collected by a client
with a persistent session, so nothing published while it reconnects is lost to the count.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, fleet, node_env

TEMPLATE = "Sensor {{ sensor }} reads {{ rms }} mm/s RMS. Is this a bearing fault? Answer yes or no."
RESULTS = "edgefleet/lab/results/#"
SCHEMA = {"type": "object", "properties": {"fault": {"type": "boolean"}}, "required": ["fault"]}


class Client:
    """A paho client with a persistent session that reconnects by itself (sensor or result reader)."""

    def __init__(self, broker: Mosquitto, subscribe: str | None = None) -> None:
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.c = broker.client(client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.c.reconnect_delay_set(0.2, 1)
        subscribed = threading.Event()
        if subscribe:
            self.c.on_connect = lambda c, *_: c.subscribe(subscribe, qos=1)
            self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        self.c.loop_start()
        if subscribe and not subscribed.wait(10):
            raise RuntimeError("could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.results.append({**json.loads(msg.payload), "_topic": msg.topic, "_raw": bytes(msg.payload)})

    def publish_acked(self, topic: str, payload: bytes, timeout: float = 60, **props: str) -> None:
        """At least once, as a sensor does: send again until the broker confirms (a re-send is a duplicate)."""
        p = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            p.UserProperty = (k, v)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.c.publish(topic, payload, qos=1, properties=p)
            try:
                info.wait_for_publish(2)
                if info.is_published():
                    return
            except (RuntimeError, ValueError):
                time.sleep(0.2)
        raise TimeoutError(f"broker never confirmed {topic}")

    def by_source(self, rule: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self.lock:
            for r in self.results:
                if r["rule"] == rule:
                    out[r["source_id"]].append(r)
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def site(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("site")
    orch = Orchestrator(tmp, broker)
    nodes = {n: NodeProcess(tmp, node_id=n, env=node_env(broker, EDGEFLEET_GROUPS="vib")) for n in ("s1", "s2")}
    try:
        for n in nodes.values():
            n.wait_serving()
        t = tmp / "vibe.j2"
        t.write_text(TEMPLATE)
        pushed: list[subprocess.CompletedProcess[str]] = []

        def push() -> bool:  # the orchestrator learns of the group when the nodes register
            pushed.append(fleet(broker, "fleet", "push-template", str(t), "--name", "vibe", "--version", "1",
                                "--target", "vib"))  # fmt: skip
            return pushed[-1].returncode == 0

        assert wait_for(push, timeout=20, interval=0.5), pushed[-1].stderr
        push_rule(broker, tmp, name="vibration", topic_filter="sensors/+/vibration", max_tokens=3)
        yield nodes
    finally:
        for n in nodes.values():
            n.stop()
        orch.stop()


def push_rule(broker: Mosquitto, tmp: Path, target: str = "vib", expect_ok: bool = True, **fields: Any) -> str:
    rule = {
        "version": "1",
        "template": "vibe",
        "variables": {"sensor": "topic[1]", "rms": "payload.rms"},
        "temperature": 0.0,
        **fields,
    }
    f = tmp / f"rule-{uuid.uuid4().hex[:6]}.yaml"
    f.write_text(yaml.safe_dump(rule))
    r = fleet(broker, "fleet", "push-rule", str(f), "--target", target)
    if expect_ok:
        # 0 once every online node of the target reported the generation applied, which a node
        # does after the broker confirmed the rule's subscription.
        assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr if not expect_ok else r.stdout


def reading(i: int, prefix: str) -> bytes:
    return json.dumps({"id": f"{prefix}-{i}", "rms": round(2 + (i % 70) / 10, 1)}).encode()


def assert_exactly_once(reader: Client, rule: str, ids: set[str], timeout: float) -> dict[str, list[dict[str, Any]]]:
    assert wait_for(lambda: ids <= set(reader.by_source(rule)), timeout=timeout, interval=0.5), (
        f"{len(ids - set(reader.by_source(rule)))} of {len(ids)} messages unanswered"
    )
    got = {k: v for k, v in reader.by_source(rule).items() if k in ids}
    for source, results in got.items():
        # A result re-sent after a lost PUBACK is the same stored answer, byte for byte: one answer.
        assert len({r["_raw"] for r in results}) == 1, f"{source} answered twice: {results}"
        assert results[0]["ok"], results[0]
    return got


def test_500_messages_answered_exactly_once_across_two_broker_restarts(
    broker: Mosquitto, site: dict[str, NodeProcess], tmp_path: Path
) -> None:
    # A node's own rule: a plain subscription in a persistent session, which Mosquitto 2.0.11 keeps
    # across a restart (it does not restore shared subscriptions; see the README).
    push_rule(broker, tmp_path, target="node:s1", name="line", topic_filter="line/+/vibration", max_tokens=3)
    reader = Client(broker, RESULTS)
    sensor = Client(broker)
    try:
        ids = {f"r-{i}" for i in range(500)}
        for i in range(500):
            if i in (150, 330):
                broker.restart()
            sensor.publish_acked(f"line/pump{i % 7}/vibration", reading(i, "r"))
        got = assert_exactly_once(reader, "line", ids, timeout=240)
        assert len(got) == 500
    finally:
        sensor.close()
        reader.close()


def test_node_killed_mid_stream_still_answers_every_message_once(
    broker: Mosquitto, site: dict[str, NodeProcess]
) -> None:
    reader = Client(broker, RESULTS)
    sensor = Client(broker)
    try:
        ids = {f"k-{i}" for i in range(120)}
        for i in range(120):
            sensor.publish_acked(f"sensors/fan{i % 3}/vibration", reading(i, "k"))
            if i == 40:
                site["s1"].kill()
        site["s1"] = site["s1"].restarted()
        site["s1"].wait_serving()
        assert_exactly_once(reader, "vibration", ids, timeout=120)
    finally:
        sensor.close()
        reader.close()


def test_two_nodes_share_a_rule_without_answering_a_message_twice(
    broker: Mosquitto, site: dict[str, NodeProcess]
) -> None:
    reader = Client(broker, RESULTS)
    sensor = Client(broker)
    try:
        ids = {f"s-{i}" for i in range(60)}
        for i in range(60):
            sensor.publish_acked(f"sensors/m{i % 5}/vibration", reading(i, "s"))
        got = assert_exactly_once(reader, "vibration", ids, timeout=90)
        by_node = defaultdict(int)
        for results in got.values():
            assert len({r["node_id"] for r in results}) == 1
            by_node[results[0]["node_id"]] += 1
        assert set(by_node) == {"s1", "s2"}, dict(by_node)
    finally:
        sensor.close()
        reader.close()


def test_rule_with_a_json_schema_answers_valid_json_on_its_output_topic(
    broker: Mosquitto, site: dict[str, NodeProcess], tmp_path: Path
) -> None:
    push_rule(
        broker,
        tmp_path,
        name="classify",
        topic_filter="plant/+/temp",
        json_schema=SCHEMA,
        max_tokens=24,
        output_topic="edgefleet/lab/results/alerts/{level1}",
        variables={"sensor": "topic[1]", "rms": "payload.c"},
    )
    reader = Client(broker, RESULTS)
    sensor = Client(broker)
    try:
        for i in range(8):
            sensor.publish_acked(f"plant/oven{i}/temp", json.dumps({"id": f"j-{i}", "c": 60 + i * 10}).encode())
        got = assert_exactly_once(reader, "classify", {f"j-{i}" for i in range(8)}, timeout=60)
        for source, (r, *_) in got.items():
            jsonschema.validate(r["answer_json"], SCHEMA)
            assert r["_topic"] == f"edgefleet/lab/results/alerts/oven{source.split('-')[1]}"
            assert r["template"] == "vibe@1" and r["rule_version"] == "1" and r["completion_tokens"] > 0
            assert {"queue_ms", "ttft_ms", "total_ms"} <= set(r)
    finally:
        sensor.close()
        reader.close()


def test_rule_with_a_collection_cites_its_source_or_abstains(
    broker: Mosquitto, site: dict[str, NodeProcess], tmp_path: Path
) -> None:
    """A rule with `collection` gets the same grounding as Generate: citations, or the abstain text."""
    alarms = (Path(__file__).resolve().parents[3] / "bench" / "rag_corpus" / "tc5-alarm-codes.md").read_text()
    for n in site.values():
        docs = [pb.Document(id="tc5-alarm-codes", text=alarms)]
        n.stub.Ingest(pb.IngestRequest(collection="manual", documents=docs), timeout=60)
    t = tmp_path / "alarm.j2"
    t.write_text("What does alarm {{ code }} on the TC-5 mean?")
    r = fleet(broker, "fleet", "push-template", str(t), "--name", "alarm", "--version", "1", "--target", "vib")
    assert r.returncode == 0, r.stderr
    push_rule(broker, tmp_path, name="alarm-help", topic_filter="plant/+/alarm", template="alarm",
              variables={"code": "payload.code"}, collection="manual", max_tokens=24)  # fmt: skip
    reader = Client(broker, RESULTS)
    sensor = Client(broker)
    try:
        for i, code in enumerate(("A03", "A12")):
            sensor.publish_acked(f"plant/chiller{i}/alarm", json.dumps({"id": f"al-{i}", "code": code}).encode())
        got = assert_exactly_once(reader, "alarm-help", {"al-0", "al-1"}, timeout=60)
        (a03,), (a12,) = got["al-0"], got["al-1"]
        assert "no glycol flow" in a03["answer_text"].lower(), a03
        assert "manual/tc5-alarm-codes#3" in [c["chunk_id"] for c in a03["citations"]] and not a03["abstained"]
        assert a12["abstained"] and a12["citations"] == [] and a12["answer_text"] == "The documents do not cover this."
        assert a12["sources"] and a12["completion_tokens"] == 0
    finally:
        sensor.close()
        reader.close()


def test_bad_messages_get_error_results_and_the_node_keeps_answering(
    broker: Mosquitto, site: dict[str, NodeProcess], tmp_path: Path
) -> None:
    push_rule(broker, tmp_path, name="strict", topic_filter="bad/+/in", max_tokens=2, max_payload_bytes=256)
    reader = Client(broker, RESULTS)
    sensor = Client(broker)
    try:
        cases = {
            "not json": (b"{rms: 1", "invalid_json"),
            "missing": (b'{"level": 3}', "missing_field"),
            "null": (b'{"rms": null}', "wrong_type"),
            "utf8": (b'{"rms": "\xff\xfe"}', "invalid_utf8"),
            "big": (json.dumps({"rms": 1, "pad": "x" * 400}).encode(), "payload_too_large"),
        }
        for key, (payload, _) in cases.items():
            sensor.publish_acked("bad/s1/in", payload, **{"msg-id": key})
        sensor.publish_acked("bad/s1/in", b'{"rms": 4.2}', **{"msg-id": "good"})
        got = wait_for(lambda: set(reader.by_source("strict")) >= {*cases, "good"}, timeout=60)
        assert got, reader.by_source("strict").keys()
        results = {k: v[0] for k, v in reader.by_source("strict").items()}
        for key, (_, code) in cases.items():
            assert not results[key]["ok"] and results[key]["error_code"] == code, results[key]
        assert results["good"]["ok"] and results["good"]["answer_text"]

        # refused when pushed: unknown template, bad topic filter, invalid JSON schema
        out = push_rule(broker, tmp_path, name="x1", topic_filter="a/+", template="nope", expect_ok=False)
        assert "template 'nope' is not desired" in out
        out = push_rule(broker, tmp_path, name="x2", topic_filter="a/b+/c", expect_ok=False)
        assert "whole level" in out
        out = push_rule(broker, tmp_path, name="x3", topic_filter="a/+", json_schema={"type": 5}, expect_ok=False)
        assert "schema" in out
    finally:
        sensor.close()
        reader.close()


def test_adhoc_request_response_and_per_rule_telemetry(broker: Mosquitto, site: dict[str, NodeProcess]) -> None:
    reader = Client(broker, RESULTS)
    for i in range(8):  # some answered messages for the telemetry to count
        reader.publish_acked(f"sensors/t{i}/vibration", reading(i, "t"))
    assert_exactly_once(reader, "vibration", {f"t-{i}" for i in range(8)}, timeout=60)
    reader.close()
    client = Client(broker, "edgefleet/lab/node/+/telemetry")
    answer: list[bytes] = []
    done = threading.Event()
    correlation = uuid.uuid4().bytes

    def on_reply(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if getattr(msg.properties, "CorrelationData", None) == correlation:
            answer.append(bytes(msg.payload))
            done.set()

    client.c.message_callback_add("cli/test/replies", on_reply)
    subscribed = threading.Event()
    client.c.on_subscribe = lambda *_: subscribed.set()
    client.c.subscribe("cli/test/replies", qos=1)
    try:
        assert subscribed.wait(10), "no SUBACK for the reply topic"
        p = Properties(PacketTypes.PUBLISH)
        p.ResponseTopic = "cli/test/replies"
        p.CorrelationData = correlation
        req = {"v": 1, "template": "vibe", "variables": {"sensor": "p1", "rms": "9.1"}, "max_tokens": 4}
        client.c.publish("edgefleet/lab/group/vib/requests", json.dumps(req).encode(), qos=1, properties=p)
        assert done.wait(30)
        reply = json.loads(answer[0])
        assert reply["ok"] and reply["text"] and reply["node_id"] in ("s1", "s2") and reply["completion_tokens"] > 0

        def rule_stats() -> dict[str, Any]:
            with client.lock:
                return {r["node_id"]: r for r in client.results if r.get("rules")}

        assert wait_for(lambda: len(rule_stats()) >= 1, timeout=10)
        for t in rule_stats().values():
            v = t["rules"]["vibration"]
            # counted since the process started (s1 was restarted: it answered messages its previous run took in)
            assert v["answered"] > 0 and v["messages_in"] > 0 and v["latency_p50_ms"] > 0
            assert t["outbox_depth"] == 0 and t["holding"] == 0
    finally:
        client.close()
