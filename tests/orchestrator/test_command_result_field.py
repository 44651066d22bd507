"""A refusal names the request field it is about (`CommandResult.field`), typed, over the wire.

The console shows a refusal next to the form field it concerns; it reads `field` (dotted, as the
request spells it: "target", "template.version", "rule.version", "sha256"), never the message. A
real orchestrator in this process, a real Mosquitto, commands over MQTT as the CLI and console send
them (signed), and the table's in-process entry for the artifact ops. Desired state is retained on
the module's broker: each test pushes to its own group.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.orchestrator.runtime import Orchestrator
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import UploadChunk
from tests.mqtt_support import Mosquitto
from tests.orchestrator.command_client import CommandClient, lab_orchestrator


def template(version: str) -> dict[str, Any]:
    return {"name": "greet", "version": version, "template": "Hi {{ who }}", "variables": ["who"]}


def rule(version: str) -> dict[str, Any]:
    return {"name": "r", "version": version, "topic_filter": "plant/+/t", "template": "greet", "variables": {}}


@pytest.fixture
def orch(broker: Mosquitto, tmp_path: Path) -> Iterator[Orchestrator]:
    with lab_orchestrator(broker, tmp_path) as o:
        yield o


@pytest.fixture
def client(orch: Orchestrator, broker: Mosquitto) -> Iterator[CommandClient]:
    c = CommandClient(broker)
    yield c
    c.close()


def test_an_older_version_is_refused_for_its_version_field(client: CommandClient) -> None:
    pushed = client.call(Command(op="push-template", target="group:line", template=template("2.0")).dumps())
    assert pushed.ok and pushed.field == "", pushed
    older = client.call(Command(op="push-template", target="group:line", template=template("1.0")).dumps())
    assert not older.ok and older.code == ErrorCode.OLDER_VERSION and older.field == "template.version", older

    assert client.call(Command(op="push-rule", target="group:line", rule=rule("3")).dumps()).ok
    older_rule = client.call(Command(op="push-rule", target="group:line", rule=rule("2")).dumps())
    assert older_rule.code == ErrorCode.OLDER_VERSION and older_rule.field == "rule.version", older_rule


def test_a_refused_target_is_refused_for_its_target_field(client: CommandClient) -> None:
    unknown = client.call(Command(op="push-template", target="no-such-group", template=template("1")).dumps())
    assert not unknown.ok and unknown.code == ErrorCode.NOT_FOUND and unknown.field == "target", unknown
    invalid = client.call(Command(op="push-template", target="node:../x", template=template("1")).dumps())
    assert not invalid.ok and invalid.code == ErrorCode.COMMAND_REFUSED and invalid.field == "target", invalid
    not_registered = client.call(Command(op="assign-groups", target="node:ghost", groups=["a"]).dumps())
    assert not_registered.code == ErrorCode.NOT_FOUND and not_registered.field == "target", not_registered


def test_other_refusals_name_their_field(client: CommandClient) -> None:
    missing = client.call(Command(op="rm-template", target="group:other", name="nope").dumps())
    assert missing.code == ErrorCode.COMMAND_REFUSED and missing.field == "name", missing
    bad_body = {**template("1"), "template": "Hi {{ who "}
    uncompiled = client.call(Command(op="push-template", target="group:other", template=bad_body).dumps())
    assert uncompiled.code == ErrorCode.TEMPLATE_ERROR and uncompiled.field == "template", uncompiled
    no_template = client.call(Command(op="push-rule", target="group:other", rule=rule("1")).dumps())
    assert no_template.code == ErrorCode.COMMAND_REFUSED and no_template.field == "rule.template", no_template


def test_a_request_that_does_not_validate_names_the_field_from_its_location(client: CommandClient) -> None:
    """Off the wire (the client cannot build it, so it goes out unsigned and is refused as it parses)."""
    raw = {"v": 1, "op": "push-template", "target": "group:other", "template": template("not a version!")}
    result = client.call(json.dumps(raw).encode())
    assert not result.ok and result.code == ErrorCode.INVALID_PAYLOAD and result.field == "template.version", result
    empty_target = client.call(json.dumps({**raw, "target": "", "template": template("1")}).encode())
    assert empty_target.code == ErrorCode.INVALID_PAYLOAD and empty_target.field == "target", empty_target
    unknown_op = client.call(b'{"v": 1, "op": "reboot"}')
    assert unknown_op.code == ErrorCode.INVALID_PAYLOAD and unknown_op.field == "", "about no one field"


def test_in_process_dispatch_names_the_field_too(orch: Orchestrator) -> None:
    invalid = orch.table.dispatch("push-adapter", {"target": "g", "name": "a", "version": "../1", "sha256": "0" * 64})
    assert invalid.code == ErrorCode.INVALID_PAYLOAD and invalid.field == "version", invalid
    unknown = orch.table.dispatch("reboot-everything", {})
    assert unknown.code == ErrorCode.INVALID_REQUEST and unknown.field == "op", unknown
    push = {"target": "group:g", "name": "a", "version": "1"}
    not_uploaded = orch.table.dispatch("push-adapter", {**push, "sha256": "0" * 64})
    assert not_uploaded.code == ErrorCode.COMMAND_REFUSED and not_uploaded.field == "sha256", not_uploaded
    data = b"not a LoRA adapter " * 64
    sha = hashlib.sha256(data).hexdigest()
    encoded = base64.b64encode(data).decode()
    piece = UploadChunk(sha256=sha, size=len(data), chunk_bytes=len(data), index=0, data=encoded)
    assert orch.table.dispatch("upload-chunk", {"upload": piece}).ok
    not_lora = orch.table.dispatch("push-adapter", {**push, "sha256": sha})
    assert not_lora.code == ErrorCode.ADAPTER_REFUSED and not_lora.field == "sha256", not_lora
