"""The command table in a real orchestrator (in this process): real SQLite, real Mosquitto, real files.

Every outcome of a command is a `CommandResult`: a success, a refusal with its code, a request
that does not validate, an unknown op, and a fault of the machine inside a handler (an `OSError`
from the artifact store), which is answered as `internal` and logged with its traceback.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.uploads import upload as upload_file
from edgefleet.orchestrator.command_errors import error_code_of
from edgefleet.orchestrator.command_table import COMMAND_OPS, CommandTable
from edgefleet.orchestrator.runtime import Orchestrator
from edgefleet.proto.artifacts import SiteKey
from edgefleet.proto.commands import Command, RemoveRuleRequest, StatusRequest, UploadChunkRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.knowledge_bundle import BundleDocument, write_bundle
from edgefleet.proto.payloads import MAX_UPLOAD_CHUNK_BYTES, CommandResult, TemplateSpec, UploadChunk
from tests.mqtt_support import Mosquitto
from tests.orchestrator.command_client import CommandClient, lab_orchestrator

TEMPLATE = {"name": "fault", "version": "1", "template": "Sensor {{ sensor }}?", "variables": ["sensor"]}


@pytest.fixture
def orch(broker: Mosquitto, tmp_path: Path) -> Iterator[Orchestrator]:
    with lab_orchestrator(broker, tmp_path) as o:
        yield o


def upload_piece(data: bytes) -> UploadChunk:
    return UploadChunk(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_bytes=1024,
        index=0,
        data=base64.b64encode(data[:1024]).decode(),
    )


def code(result: CommandResult) -> ErrorCode | None:
    return error_code_of(result)


def test_every_op_of_the_command_contract_has_one_handler(orch: Orchestrator) -> None:
    assert orch.table.ops == COMMAND_OPS
    assert {"status", "push-template", "upload-chunk", "push-rule", "push-knowledge", "keys-create"} <= COMMAND_OPS
    with pytest.raises(ValueError, match="has a handler already"):
        orch.table.register(StatusRequest, lambda _: CommandResult(ok=True))


def test_a_parsed_command_reaches_its_handler_as_it_is_validated_once() -> None:
    """The wire model is the typed request: the table hands the handler the very object parsed."""
    seen: list[RemoveRuleRequest] = []
    table = CommandTable()
    table.register(RemoveRuleRequest, lambda req: seen.append(req) or CommandResult(ok=True))
    cmd = Command(op="rm-rule", target="line", name="r1")
    assert table.dispatch_command(cmd).ok
    assert seen == [cmd.request] and seen[0] is cmd.request
    unhandled = table.dispatch_command(Command(op="status"))
    assert not unhandled.ok and code(unhandled) == ErrorCode.INVALID_REQUEST


def test_dispatch_runs_the_op_s_handler_and_the_desired_state_grows_a_generation(orch: Orchestrator) -> None:
    first = orch.table.dispatch("push-template", {"target": "group:grows", "template": TEMPLATE})
    assert first.ok and first.data == {"generation": 1, "target": "group:grows"}, first
    second = orch.table.dispatch("push-template", {"target": "group:grows", "template": {**TEMPLATE, "version": "2"}})
    assert second.ok and second.data["generation"] == 2
    stored = orch.registry.desired("group:grows")
    assert stored is not None and stored.templates["fault"].version == "2"
    # its own target: the module broker keeps other tests' retained desired state, in any order
    assert orch.view.snapshot().desired_generations["group:grows"] == 2
    removed = orch.table.dispatch("rm-template", {"target": "group:grows", "name": "fault"})
    assert removed.ok and removed.data["generation"] == 3
    status = orch.table.dispatch("status", {})
    assert status.ok and status.data["nodes"] == [] and status.data["total"] == 0
    assert status.data["next_offset"] is None and status.data["summary"]["total"] == 0


def test_an_unknown_op_is_answered_with_invalid_request(orch: Orchestrator) -> None:
    result = orch.table.dispatch("reboot-everything", {})
    assert not result.ok and code(result) == ErrorCode.INVALID_REQUEST
    assert "reboot-everything" in result.message and "push-template" in result.message


@pytest.mark.parametrize(
    ("op", "fields", "words"),
    [
        ("push-template", {"target": "group:g"}, "template: Field required"),
        ("status", {"name": "x"}, "name: Extra inputs are not permitted"),
        ("push-adapter", {"target": "g", "name": "a", "version": "1", "sha256": "../../etc"}, "sha256"),
        ("rm-rule", {"target": "g", "name": ""}, "name: String should have at least 1 character"),
        ("push-template", {"target": "g", "template": {**TEMPLATE, "variables": ["not an id"]}}, "identifier"),
    ],
)
def test_a_request_that_does_not_validate_is_answered_with_invalid_payload(
    orch: Orchestrator, op: str, fields: dict[str, Any], words: str
) -> None:
    result = orch.table.dispatch(op, fields)
    assert not result.ok and code(result) == ErrorCode.INVALID_PAYLOAD, result
    assert result.message.startswith(f"invalid {op} request: ") and words in result.message


def test_a_refusal_is_answered_with_command_refused(orch: Orchestrator) -> None:
    result = orch.table.dispatch("rm-template", {"target": "group:g", "name": "nope"})
    assert not result.ok and code(result) == ErrorCode.COMMAND_REFUSED
    assert result.message == "template 'nope' is not desired for group:g"
    bad = orch.table.dispatch("push-template", {"target": "g", "template": {**TEMPLATE, "template": "{% if %}"}})
    assert not bad.ok and code(bad) == ErrorCode.TEMPLATE_ERROR and "syntax error" in bad.message


def test_an_os_error_inside_a_handler_is_answered_as_internal_naming_its_cause(
    orch: Orchestrator, caplog: pytest.LogCaptureFixture
) -> None:
    data = bytes(range(256)) * 8
    piece = upload_piece(data)
    blocker = orch.store.root / "uploads" / piece.sha256
    blocker.write_bytes(b"a file where the upload's directory should be")
    with caplog.at_level(logging.ERROR, logger="edgefleet.orchestrator.commands"):
        result = orch.table.dispatch("upload-chunk", {"upload": piece})
    assert not result.ok and code(result) == ErrorCode.INTERNAL, result
    assert "FileExistsError" in result.message and piece.sha256 in result.message
    failed = [r for r in caplog.records if r.getMessage() == "command failed"]
    assert failed and failed[0].exc_info is not None and isinstance(failed[0].exc_info[1], FileExistsError)
    # the fault is the machine's, not the table's: once it is gone the same command succeeds
    blocker.unlink()
    again = orch.table.dispatch("upload-chunk", {"upload": piece})
    assert again.ok and again.data == {"missing": 1}


def test_over_mqtt_every_request_gets_an_answer_with_a_code(orch: Orchestrator, broker: Mosquitto) -> None:
    client = CommandClient(broker)
    try:
        ok = client.call(Command(op="push-template", target="group:g", template=TemplateSpec(**TEMPLATE)).dumps())
        assert ok.ok and ok.data["generation"] == 1
        not_json = client.call(b"{nope")
        assert not not_json.ok and code(not_json) == ErrorCode.INVALID_PAYLOAD and "not JSON" in not_json.message
        unknown = client.call(b'{"v": 1, "op": "reboot"}')
        assert not unknown.ok and code(unknown) == ErrorCode.INVALID_PAYLOAD and "op" in unknown.message
        piece = upload_piece(bytes(2048))
        (orch.store.root / "uploads" / piece.sha256).write_bytes(b"in the way")
        broken = client.call(Command(op="upload-chunk", upload=piece).dumps())
        assert not broken.ok and code(broken) == ErrorCode.INTERNAL and "FileExistsError" in broken.message
        # the worker that ran the failed command runs the next one
        assert client.call(Command(op="status").dumps()).ok
    finally:
        client.close()


def upload(orch: Orchestrator, data: bytes) -> str:
    """Upload `data` through the table, piece by piece, as the CLI does; returns its sha256."""
    sha, step = hashlib.sha256(data).hexdigest(), 1024
    for i in range(-(-len(data) // step)):
        part = base64.b64encode(data[i * step : (i + 1) * step]).decode()
        piece = UploadChunk(sha256=sha, size=len(data), chunk_bytes=step, index=i, data=part)
        assert orch.table.dispatch("upload-chunk", {"upload": piece}).ok
    assert orch.store.has_blob(sha)
    return sha


def test_artifact_refusals_carry_their_own_codes(orch: Orchestrator, tmp_path: Path) -> None:
    docs = [BundleDocument(f"doc-{i}", f"pump {i} strainer notes " * 40) for i in range(20)]
    bundle = upload(orch, write_bundle(docs))
    push = {"target": "group:line-1", "name": "plant", "sha256": bundle}
    no_key = orch.table.dispatch("push-knowledge", {**push, "version": "2"})
    assert not no_key.ok and code(no_key) == ErrorCode.NO_SITE_KEY and "init-site" in no_key.message
    SiteKey.generate().save(tmp_path / "lab.key", tmp_path / "lab.pub")
    pushed = orch.table.dispatch("push-knowledge", {**push, "version": "2"})
    assert pushed.ok and pushed.data["target"] == "group:line-1", pushed
    older = orch.table.dispatch("push-knowledge", {**push, "version": "1.9"})
    assert not older.ok and code(older) == ErrorCode.OLDER_VERSION and "older than 2" in older.message
    not_a_bundle = upload(orch, b"plain text, not gzip'd JSON lines " * 64)
    refused = orch.table.dispatch("push-knowledge", {**push, "sha256": not_a_bundle, "version": "3"})
    assert not refused.ok and code(refused) == ErrorCode.KNOWLEDGE_REFUSED
    not_lora = orch.table.dispatch("push-adapter", {**push, "name": "fix", "sha256": not_a_bundle, "version": "1"})
    assert not not_lora.ok and code(not_lora) == ErrorCode.ADAPTER_REFUSED
    bad_version = orch.table.dispatch("push-adapter", {**push, "name": "fix", "version": "../1"})
    assert not bad_version.ok and code(bad_version) == ErrorCode.INVALID_PAYLOAD and "version" in bad_version.message


def test_the_one_upload_path_sends_confirmed_pieces_and_stops_early(orch: Orchestrator) -> None:
    """`fleet/uploads.py` (the CLI's and the console's upload) against the real table and store."""
    data = bytes(range(256)) * (3 * MAX_UPLOAD_CHUNK_BYTES // 256 - 7)  # three pieces, the last one short
    sent: list[int] = []

    def send(cmd: Command) -> CommandResult:
        assert isinstance(cmd.request, UploadChunkRequest)
        sent.append(cmd.request.upload.index)
        return orch.table.dispatch_command(cmd)

    progress: list[tuple[int, int, bool]] = []
    sha, result = upload_file(send, data, lambda *p: progress.append(p))
    # the first piece alone, then the rest in flight together (answered in any order)
    assert result.ok and sent[0] == 0 and sorted(sent) == [0, 1, 2] and progress[-1] == (3, 3, True), (result, progress)
    assert orch.store.has_blob(sha) and orch.store.blob_path(sha).read_bytes() == data
    sent.clear()
    assert upload_file(send, data)[1].ok and sent == [0]  # held already: the first answer says nothing is missing
    other = bytes(2 * MAX_UPLOAD_CHUNK_BYTES)
    (orch.store.root / "uploads" / hashlib.sha256(other).hexdigest()).write_bytes(b"in the way")
    sent.clear()
    _, refused = upload_file(send, other)
    assert not refused.ok and code(refused) == ErrorCode.INTERNAL and sent == [0]  # a refusal ends it
