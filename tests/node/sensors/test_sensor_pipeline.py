"""The sensor pipeline on a real node and a real Mosquitto: overlapping rules, a poison message, versions at start.

Each test starts its own node (its fail points are the node's, read once at start), with desired
state published signed and retained, as the orchestrator does, and waits on what the node says:
its reported state, its results, its error reports, its telemetry, its fail points announcing
themselves in its log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.proto.payloads import DesiredState, Target, TemplateSpec
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.conftest import NodeProcess, wait_for
from tests.mqtt_support import Mosquitto, Watcher, node_env

TOPICS = Topics.for_site("lab")


def desired(node_id: str, generation: int, rules: dict[str, str], template_version: str = "1") -> DesiredState:
    """Template `ask` at `template_version` and one rule per (name → topic filter)."""
    text = "Is {{ v }} at {{ where }} OK?" if template_version == "1" else "Reading {{ v }} from {{ where }}: fine?"
    return DesiredState(
        site="lab",
        target=Target(kind="node", name=node_id),
        generation=generation,
        templates={"ask": TemplateSpec(name="ask", version=template_version, template=text, variables=["v", "where"])},
        rules={
            name: RuleSpec(
                name=name,
                version="1",
                topic_filter=flt,
                template="ask",
                variables={"v": "payload.v", "where": "topic[1]"},
                max_tokens=2,
            )
            for name, flt in rules.items()
        },
    )


@pytest.fixture(scope="module")
def watcher(broker: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(broker, "edgefleet/lab/#")
    yield w
    w.close()


def reported(w: Watcher, node_id: str) -> list[dict[str, Any]]:
    return w.on(TOPICS.node_reported(node_id))


def results(w: Watcher, node_id: str) -> list[dict[str, Any]]:
    return w.on(TOPICS.results(node_id), prefix=True)


def of(w: Watcher, node_id: str, rule: str, source_id: str) -> list[dict[str, Any]]:
    return [r for r in results(w, node_id) if r["rule"] == rule and r["source_id"] == source_id]


def apply(w: Watcher, doc: DesiredState) -> None:
    """Publish a desired state and wait until the node reports it applied (rules subscribed by then)."""
    node_id, key = doc.target.name, doc.target.key
    w.publish(TOPICS.desired_node(node_id), site_identity.site().signed(doc), retain=True)
    assert wait_for(
        lambda: any(r["generations"].get(key, 0) >= doc.generation for r in reported(w, node_id)), timeout=30
    ), reported(w, node_id)


@pytest.fixture
def start_node(broker: Mosquitto, watcher: Watcher, tmp_path: Path) -> Iterator[Any]:
    started: list[NodeProcess] = []

    def start(doc: DesiredState, **env: str) -> NodeProcess:
        node = NodeProcess(tmp_path, node_id=doc.target.name, env=node_env(broker, **env))
        started.append(node)
        node.wait_serving()
        apply(watcher, doc)
        return node

    yield start
    for node in started:
        node.stop()


def announced(node: NodeProcess, failpoint: str) -> int:
    """How often the node's log says the fail point acted."""
    return sum(1 for line in node.log().splitlines() if "fail point acting" in line and f"={failpoint} " in line + " ")


def test_a_message_matching_overlapping_rules_is_answered_once_per_rule_and_taken_once(
    start_node: Any, watcher: Watcher, broker: Mosquitto
) -> None:
    w, node_id = watcher, "ovl1"
    start_node(desired(node_id, 1, {"all": "ovl/#", "temp": "ovl/+/temp"}))
    w.publish("ovl/s1/temp", json.dumps({"id": "o-1", "v": 3}).encode())
    # A marker after it, for `all` only: the broker delivers in order, so once the marker is taken in,
    # every delivery of o-1 (a second copy included) was handled before it.
    w.publish("ovl/s1/other", json.dumps({"id": "marker", "v": 4}).encode())
    wanted = [("all", "o-1"), ("temp", "o-1"), ("all", "marker")]
    assert wait_for(lambda: all(of(w, node_id, *k) for k in wanted), timeout=60), results(w, node_id)
    assert [len(of(w, node_id, *k)) for k in wanted] == [1, 1, 1], results(w, node_id)
    assert all(r["ok"] for r in results(w, node_id))

    def rules_seen() -> dict[str, Any]:
        done = [t["rules"] for t in w.on(TOPICS.node_telemetry(node_id)) if t.get("rules", {}).get("all", {})]
        return next((r for r in reversed(done) if r["all"]["answered"] == 2 and r["temp"]["answered"] == 1), {})

    assert wait_for(lambda: bool(rules_seen()), timeout=15), w.on(TOPICS.node_telemetry(node_id))[-1:]
    counted = rules_seen()
    # Taken once: one inbox row per rule, no delivery of it seen twice (a second copy or a second
    # handler call would count as a duplicate, and be acknowledged a second time).
    assert (counted["all"]["messages_in"], counted["all"]["duplicates"]) == (2, 0), counted
    assert (counted["temp"]["messages_in"], counted["temp"]["duplicates"]) == (1, 0), counted
    broker_log = (broker.dir / "mosquitto.log").read_text(errors="replace")
    assert "unknown packet identifier" not in broker_log.lower()


def test_a_message_that_keeps_failing_is_parked_with_an_error_report(start_node: Any, watcher: Watcher) -> None:
    w, node_id = watcher, "poison1"
    node = start_node(
        desired(node_id, 1, {"probe": "pz/+/reading"}),
        EDGEFLEET_FAILPOINTS="sensors.answer=raise",
        EDGEFLEET_SENSOR_MAX_ATTEMPTS="2",
    )
    w.publish("pz/p1/reading", json.dumps({"id": "bad-1", "v": 3}).encode())
    assert wait_for(lambda: of(w, node_id, "probe", "bad-1"), timeout=60), results(w, node_id)
    [result] = of(w, node_id, "probe", "bad-1")
    assert not result["ok"] and result["error_code"] == "poison_message", result
    assert "parked after 2 failed tries" in result["error"]

    def poison_reports() -> list[dict[str, Any]]:
        return [e for e in w.on(TOPICS.errors(node_id)) if e["code"] == "poison_message"]

    assert wait_for(lambda: bool(poison_reports()), timeout=10), w.on(TOPICS.errors(node_id))
    [report] = poison_reports()
    assert report["topic"] == "pz/p1/reading" and "bad-1" in report["message"]
    # Tried exactly the allowed number of times, and the ledger says so; then never again.
    assert announced(node, "sensors.answer") == 2, node.log()[-3000:]
    with sqlite3.connect(f"file:{node.data_dir / 'sensors.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT state, attempts FROM inbox WHERE id = 'bad-1'").fetchall() == [("done", 2)]


def test_versions_are_those_the_answer_started_with_when_the_template_is_swapped_mid_answer(
    start_node: Any, watcher: Watcher
) -> None:
    w, node_id = watcher, "ver1"
    # Each answer waits 5 s after the engine finished it, before it is written: room to swap the template.
    node = start_node(
        desired(node_id, 1, {"probe": "ver/+/reading"}), EDGEFLEET_FAILPOINTS="sensors.answer.finish=sleep:5000"
    )
    w.publish("ver/p1/reading", json.dumps({"id": "v-1", "v": 3}).encode())
    assert wait_for(lambda: announced(node, "sensors.answer.finish") == 1, timeout=60), node.log()[-3000:]
    apply(w, desired(node_id, 2, {"probe": "ver/+/reading"}, template_version="2"))
    assert any(r["templates"] == {"ask": "2"} for r in reported(w, node_id))
    assert not of(w, node_id, "probe", "v-1"), "the answer was written before the swap: the test proves nothing"
    assert wait_for(lambda: of(w, node_id, "probe", "v-1"), timeout=30), results(w, node_id)
    [first] = of(w, node_id, "probe", "v-1")
    assert first["ok"] and first["template"] == "ask@1", first
    # Work started after the swap is made with, and labelled, the new version.
    w.publish("ver/p1/reading", json.dumps({"id": "v-2", "v": 4}).encode())
    assert wait_for(lambda: of(w, node_id, "probe", "v-2"), timeout=60), results(w, node_id)
    assert of(w, node_id, "probe", "v-2")[0]["template"] == "ask@2"


def test_a_message_the_node_dies_on_is_parked_at_the_next_start(start_node: Any, watcher: Watcher) -> None:
    w, node_id = watcher, "crash1"
    env = {"EDGEFLEET_FAILPOINTS": "sensors.answer.finish=sleep:60000", "EDGEFLEET_SENSOR_MAX_ATTEMPTS": "1"}
    node = start_node(desired(node_id, 1, {"probe": "cr/+/reading"}), **env)
    w.publish("cr/p1/reading", json.dumps({"id": "boom-1", "v": 3}).encode())
    assert wait_for(lambda: announced(node, "sensors.answer.finish") == 1, timeout=60), node.log()[-3000:]
    node.kill()  # dies mid-answer, as on a message that crashes it: the row was claimed, one try
    again = node.restarted()
    try:
        again.wait_serving()
        assert wait_for(lambda: of(w, node_id, "probe", "boom-1"), timeout=60), results(w, node_id)
        [result] = of(w, node_id, "probe", "boom-1")
        assert not result["ok"] and result["error_code"] == "poison_message", result
        assert wait_for(lambda: any(e["code"] == "poison_message" for e in w.on(TOPICS.errors(node_id))), timeout=10)
        assert announced(again, "sensors.answer.finish") == 1  # the same log: not tried a second time
    finally:
        again.stop()
