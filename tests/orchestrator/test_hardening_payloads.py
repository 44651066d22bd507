"""What a device or a careless client throws at the orchestrator: a real Mosquitto and a real orchestrator process.

JSON nested 100,000 levels deep, a 100 KB name, generations beyond what SQLite or JSON readers
hold: each is refused with a reason naming the limit, quoted briefly, and the orchestrator keeps
answering. Pushing a version that goes backwards, or to a group no node is in, is refused with
its own code unless asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from edgefleet.proto.commands import Command
from edgefleet.proto.payloads import TemplateSpec
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher
from tests.orchestrator.command_client import CommandClient

TEMPLATE = TemplateSpec(name="fault", version="2", template="Sensor {{ sensor }}?", variables=["sensor"])
DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 KB: under the 256 KiB payload limit


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Orchestrator, CommandClient]]:
    tmp = tmp_path_factory.mktemp("hardening")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    client = CommandClient(broker)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the orchestrator subscribes within a second or two of starting
        if client.answer(client.send(Command(op="status").dumps()), 1.0) is not None:
            break
    yield broker, orch, client
    client.close()
    orch.stop()
    broker.stop()


def test_deeply_nested_json_is_refused_naming_the_limit_and_the_orchestrator_keeps_answering(
    site: tuple[Mosquitto, Orchestrator, CommandClient],
) -> None:
    broker, orch, client = site
    errors = Watcher(broker, "edgefleet/lab/errors/orchestrator")
    try:
        answer = client.call(DEEP)
        assert not answer.ok and answer.code == "invalid_payload", answer
        assert "nests 100000 levels deep; at most 64" in answer.message
        for kind in ("status", "reported", "telemetry"):
            errors.publish(f"edgefleet/lab/node/deep/{kind}", DEEP)
        errors.publish("edgefleet/lab/desired/group/deep", DEEP)
        assert wait_for(lambda: sum("levels deep" in e["message"] for e in errors.json()) >= 5, timeout=10), [
            e["message"][:100] for e in errors.json()
        ]
        assert client.call(Command(op="status").dumps()).ok
        assert orch.proc is not None and orch.proc.poll() is None
        assert "RecursionError" not in orch.log_path.read_text()
    finally:
        errors.close()


def test_a_huge_client_value_is_quoted_briefly_in_the_answer_and_the_log(
    site: tuple[Mosquitto, Orchestrator, CommandClient],
) -> None:
    _, orch, client = site
    huge = "x" * 100_000
    for cmd in (
        Command(op="rm-template", target="group:line-1", name=huge),
        Command(op="push-template", target=huge, template=TEMPLATE),
        Command(op="rm-rule", target=f"node:{huge}", name="r"),
    ):
        answer = client.call(cmd.dumps())
        assert not answer.ok and len(answer.message) < 1000, (cmd.op, len(answer.message))
        assert " characters)" in answer.message, answer.message
    assert huge not in orch.log_path.read_text()


@pytest.mark.parametrize("generation", [10**35, 2**63 - 1, 2**53 + 1])
def test_a_generation_beyond_the_bound_is_refused_and_later_pushes_still_work(
    site: tuple[Mosquitto, Orchestrator, CommandClient], generation: int
) -> None:
    broker, orch, client = site
    group = f"big-{len(str(generation))}"
    client.call(Command(op="push-template", target=f"group:{group}", template=TEMPLATE).dumps())
    errors = Watcher(broker, "edgefleet/lab/errors/orchestrator")
    try:
        doc = {"v": 1, "site": "lab", "target": {"kind": "group", "name": group}, "generation": generation}
        errors.publish(f"edgefleet/lab/desired/group/{group}", json.dumps(doc).encode(), retain=True)
        assert wait_for(lambda: any("generation" in e["message"] for e in errors.json()), timeout=10)
        assert any("less than or equal to 9007199254740992" in e["message"] for e in errors.json())
    finally:
        errors.close()
    t0 = time.monotonic()
    pushed = client.call(Command(op="push-template", target=f"group:{group}", template=TEMPLATE).dumps())
    assert pushed.ok and pushed.data["generation"] == 2, pushed
    assert time.monotonic() - t0 < 5
    assert "OverflowError" not in orch.log_path.read_text()


def test_a_version_going_backwards_is_refused_unless_forced(
    site: tuple[Mosquitto, Orchestrator, CommandClient],
) -> None:
    _, _, client = site
    assert client.call(Command(op="push-template", target="group:back", template=TEMPLATE).dumps()).ok
    older = TEMPLATE.model_copy(update={"version": "1"})
    refused = client.call(Command(op="push-template", target="group:back", template=older).dumps())
    assert not refused.ok and refused.code == "older_version", refused
    assert "older than 2" in refused.message and "--force" in refused.message
    same = client.call(Command(op="push-template", target="group:back", template=TEMPLATE).dumps())
    assert same.ok, "the same version again is a re-push, not a step back"
    forced = client.call(Command(op="push-template", target="group:back", template=older, force=True).dumps())
    assert forced.ok and forced.data["generation"] == 3, forced


def test_a_bare_target_that_names_nothing_is_refused_unless_a_new_group_is_asked_for(
    site: tuple[Mosquitto, Orchestrator, CommandClient],
) -> None:
    _, _, client = site
    refused = client.call(Command(op="push-template", target="nosuchgroup", template=TEMPLATE).dumps())
    assert not refused.ok and refused.code == "not_found", refused
    assert "--new-group" in refused.message and "nosuchgroup" in refused.message
    status = client.call(Command(op="status").dumps())
    assert status.ok
    made = client.call(Command(op="push-template", target="nosuchgroup", template=TEMPLATE, new_group=True).dumps())
    assert made.ok and made.data["target"] == "group:nosuchgroup", made
    assert "no node is in group nosuchgroup yet" in made.message
    again = client.call(Command(op="push-template", target="nosuchgroup", template=TEMPLATE).dumps())
    assert again.ok, "a group with desired state is known from then on"
