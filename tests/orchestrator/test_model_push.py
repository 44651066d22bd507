"""Base models to a target through a real broker and orchestrator: upload, header read, signed manifest
under the target's scope, desired state naming the model; upload-only for rollouts; every refusal.

The node side (budget check, download, switch) is tested with nodes in tests/node; here no node runs:
what the orchestrator publishes is read off the broker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet.site_commands import model_cell
from edgefleet.fleet.uploads import upload_file
from edgefleet.node.model_catalog import resolve_model
from edgefleet.orchestrator.drift import drift_reasons
from edgefleet.proto.artifacts import Manifest, load_public_key, verify
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.model_gguf import read_model
from edgefleet.proto.payloads import (
    ArtifactRef,
    CommandResult,
    DesiredState,
    ReportedState,
    Target,
    TransferProgress,
)
from edgefleet.proto.topics import Topics
from tests.conftest import wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, fleet, init_site_keys
from tests.orchestrator.command_client import CommandClient
from tools.make_lora import write_lora

pytestmark = pytest.mark.in_file_order  # one site, each test starts where the one before left it

TOPICS = Topics.for_site("lab")
LINE = TOPICS.artifact_scope("group", "line")
CHUNK = 1024 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_site_keys(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_model(None, tmp_path_factory.mktemp("models")).path  # smollm2-135m-instruct


def online(broker: Mosquitto) -> Watcher:
    """Waits until the orchestrator announces itself online (after a start or a restart)."""
    w = Watcher(broker, TOPICS.orchestrator_status())
    assert wait_for(lambda: bool(w.json()) and w.json()[-1].get("state") == "online", timeout=30)
    return w


@pytest.fixture(scope="module")
def orchestrator(
    broker: Mosquitto, site: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orchestrator]:
    env = {"EDGEFLEET_SITE_KEY": str(site["key"]), "EDGEFLEET_ARTIFACT_CHUNK_BYTES": str(CHUNK)}
    o = Orchestrator(tmp_path_factory.mktemp("orchestrator"), broker, env=env)
    online(broker).close()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def client(broker: Mosquitto, orchestrator: Orchestrator) -> Iterator[CommandClient]:
    c = CommandClient(broker)
    yield c
    c.close()


def retained(broker: Mosquitto, topic: str) -> dict[str, object] | None:
    """The retained message on `topic` now (None: none), as a fresh subscriber gets it."""
    w = Watcher(broker, topic)
    try:
        wait_for(lambda: bool(w.messages), timeout=1.5)
        found = w.json()
        return found[-1] if found else None
    finally:
        w.close()


def call(client: CommandClient, **fields: object) -> CommandResult:
    return client.call(Command(**fields).dumps(), timeout=60)


def uploaded(client: CommandClient, path: Path) -> str:
    sha, r = upload_file(lambda cmd: client.call(cmd.dumps(), timeout=30), path)
    assert r.ok, r
    return sha


def test_a_pushed_model_is_signed_described_and_desired_for_its_target(
    broker: Mosquitto, orchestrator: Orchestrator, site: dict[str, Path], model: Path
) -> None:
    r = fleet(
        broker,
        "fleet",
        "model",
        "push",
        str(model),
        "--name",
        "tiny",
        "--version",
        "1.0",
        "--target",
        "group:line",
        "--no-wait",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "model tiny@1.0" in r.stdout and "pushed to group:line" in r.stdout, r.stdout
    assert "llama, 30 layers, 23040 KV bytes per token" in r.stderr, r.stderr

    found = retained(broker, TOPICS.artifact_manifest(LINE, "model", "tiny"))
    assert found is not None, "no retained manifest under the group's scope"
    manifest = Manifest.model_validate(found)
    verify(manifest, load_public_key(site["pub"]))  # signed with the site key
    assert (manifest.kind, manifest.version, manifest.size) == ("model", "1.0", model.stat().st_size)
    assert manifest.model_architecture == "llama"
    assert manifest.kv_bytes_per_token == read_model(model).kv_bytes_per_token == 23040
    assert manifest.chunk_bytes == CHUNK and manifest.chunk_count == -(-manifest.size // CHUNK)

    doc = DesiredState.model_validate(retained(broker, TOPICS.desired_group("line")))
    assert doc.model is not None and doc.key_id, doc
    assert (doc.model.name, doc.model.version, doc.model.sha256, doc.model.size) == (
        "tiny",
        "1.0",
        manifest.sha256,
        manifest.size,
    )


def test_upload_only_signs_and_answers_the_reference_but_changes_no_target(
    broker: Mosquitto, client: CommandClient, model: Path
) -> None:
    before = DesiredState.model_validate(retained(broker, TOPICS.desired_group("line")))
    sha = uploaded(client, model)  # held already: the first piece's answer ends the upload
    r = call(client, op="push-model", target="group:line", name="tiny", version="2.0", sha256=sha, upload_only=True)
    assert r.ok, r
    assert r.data["model"] == {"name": "tiny", "version": "2.0", "sha256": sha, "size": model.stat().st_size}
    assert (r.data["architecture"], r.data["kv_bytes_per_token"]) == ("llama", 23040)
    after = DesiredState.model_validate(retained(broker, TOPICS.desired_group("line")))
    assert after.generation == before.generation and after.model == before.model
    shown = retained(broker, TOPICS.artifact_manifest(LINE, "model", "tiny"))
    assert shown is not None and shown["version"] == "1.0"  # nothing published for 2.0


def test_what_is_no_model_or_goes_back_a_version_is_refused_by_name(
    client: CommandClient, model: Path, tmp_path: Path
) -> None:
    lora = uploaded(client, write_lora(model, tmp_path / "fix.gguf", rank=4))
    r = call(client, op="push-model", target="group:line", name="fix", version="1", sha256=lora)
    assert not r.ok and r.code == ErrorCode.MODEL_REFUSED and r.field == "sha256", r
    assert "LoRA adapter" in r.message and "push-adapter" in r.message, r.message

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF but not really" * 4096)
    r = call(client, op="push-model", target="group:line", name="junk", version="1", sha256=uploaded(client, junk))
    assert not r.ok and r.code == ErrorCode.MODEL_REFUSED and "not a readable GGUF" in r.message, r

    sha = uploaded(client, model)
    r = call(client, op="push-model", target="group:line", name="tiny", version="0.9", sha256=sha)
    assert not r.ok and r.code == ErrorCode.OLDER_VERSION and r.field == "version", r
    assert "--force" in r.message
    r = call(client, op="push-model", target="group:line", name="tiny", version="2.0", sha256=lora)  # kept above
    assert not r.ok and r.field == "version" and "tiny@2.0 was pushed before with other content" in r.message, r
    r = call(client, op="push-model", target="nowhere", name="tiny", version="3.0", sha256=sha)
    assert not r.ok and r.code == ErrorCode.NOT_FOUND and r.field == "target", r
    r = call(client, op="rm-model", target="group:spare")
    assert not r.ok and r.code == ErrorCode.NOT_FOUND and "no model is desired" in r.message, r

    # --force goes back: a node target (none registered: it gets it when it connects)
    r = call(client, op="push-model", target="node:n1", name="tiny", version="0.9", sha256=sha, force=True)
    assert r.ok and "no node n1 has registered yet" in r.message, r


def test_rm_model_returns_the_target_to_its_nodes_own_model(broker: Mosquitto, orchestrator: Orchestrator) -> None:
    r = fleet(broker, "fleet", "model", "rm", "--target", "group:line")
    assert r.returncode == 0, r.stderr
    assert "back to their own model" in r.stdout
    doc = DesiredState.model_validate(retained(broker, TOPICS.desired_group("line")))
    assert doc.model is None
    assert retained(broker, TOPICS.artifact_manifest(LINE, "model", "tiny")) is None  # the scope forgot it

    r = fleet(
        broker, "fleet", "model", "push", str(Path(__file__)), "--name", "x", "--version", "1", "--target", "line"
    )
    assert r.returncode == 2 and "not a readable GGUF file" in r.stderr, r.stderr  # refused before any upload


def test_a_model_larger_than_the_site_takes_is_refused_with_the_numbers(
    broker: Mosquitto, orchestrator: Orchestrator, client: CommandClient, model: Path
) -> None:
    orchestrator.stop()
    orchestrator.env["EDGEFLEET_MAX_MODEL_BYTES"] = str(1024 * 1024)
    orchestrator.start()
    online(broker).close()
    sha = uploaded(client, model)  # kept from before the restart
    r = call(client, op="push-model", target="group:line", name="big", version="1", sha256=sha)
    assert not r.ok and r.code == ErrorCode.MODEL_REFUSED and r.field == "sha256", r
    assert f"is {model.stat().st_size} bytes" in r.message and "at most 1048576 bytes" in r.message, r.message
    assert "EDGEFLEET_MAX_MODEL_BYTES" in r.message
    assert json.dumps(r.data) == "{}"


def test_a_node_not_yet_serving_its_desired_model_is_drifted_and_status_shows_both() -> None:
    ref = ArtifactRef(name="tiny", version="1.0", sha256="a" * 64, size=10)
    desired = {
        "group:line": DesiredState(site="lab", target=Target(kind="group", name="line"), generation=2, model=ref)
    }
    base: dict[str, Any] = {"node_id": "n1", "generations": {"group:line": 2}}
    waiting = ReportedState(**base, model="smollm2-135m-instruct")
    assert drift_reasons("n1", ["line"], desired, waiting) == [
        "model tiny@1.0 not fetched, serving smollm2-135m-instruct"
    ]
    fetching = ReportedState(
        **base,
        model="smollm2-135m-instruct",
        transfers={
            "model/tiny": TransferProgress(kind="model", name="tiny", version="1.0", have=3, total=10, state="fetching")
        },
    )
    assert drift_reasons("n1", ["line"], desired, fetching) == [
        "model tiny@1.0 fetching 3/10, serving smollm2-135m-instruct"
    ]
    assert drift_reasons("n1", ["line"], desired, ReportedState(**base, model="tiny@1.0")) == []
    row = {"model": "smollm2-135m-instruct", "reported_model": "smollm2-135m-instruct", "desired_model": "tiny@1.0"}
    assert model_cell(row) == "smollm2-135m-instruct -> tiny@1.0"
    assert model_cell({**row, "reported_model": "tiny@1.0"}) == "tiny@1.0"
