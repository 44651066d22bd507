"""Base-model deployments on a node (issue 25): a GGUF model comes as a signed artifact, is checked
against the node's memory budget before any chunk is asked for, downloaded while the node serves,
verified, then switched to (drain, execute again, load, check, commit) or refused with the reason.

Real processes: a TLS Mosquitto, an orchestrator whose front door listens, two nodes (`ms-a` switches,
`ms-b` keeps serving). This module plays the orchestrator's artifact side itself (the `push-model`
command is another slice): it signs manifests with the site key, publishes the node's desired state
signed, and answers the node's chunk requests from the files, recording every request, the way
tests/security/test_artifact_scope.py and the orchestrator's chunk sender do.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import paho.mqtt.client as mqtt
import pytest

from edgefleet.node.model_catalog import resolve_model
from edgefleet.orchestrator.api_keys import KeyStore
from edgefleet.proto.artifacts import DEFAULT_CHUNK_BYTES, Manifest, SiteKey, build_manifest
from edgefleet.proto.lora_gguf import read_lora
from edgefleet.proto.model_gguf import read_model
from edgefleet.proto.payloads import ArtifactRef, ChunkRequest, DesiredState, Target
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity
from tests.conftest import NodeProcess, free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, node_env
from tools.make_lora import write_lora

pytestmark = pytest.mark.in_file_order  # one site, each test starts where the one before left it

T = Topics.for_site("lab")
A, B = "ms-a", "ms-b"
SCOPE = T.artifact_scope("node", A)
NODE_KEY = "x-edgefleet-node"
SWITCH_S = 180  # a switch here: transfer of up to 250 MB + drain + restart + load + check


class ChunkServer:
    """The orchestrator's chunk side for this test: answers `artifact/requests/+` from files it was given.
    `truncate_once`: chunk indices sent once cut short (the node refuses them and asks again)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.files: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.truncate_once: set[tuple[str, int]] = set()
        self.requests: list[ChunkRequest] = []
        self._lock = threading.Lock()
        self.client = broker.client("h5-chunk-server")
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(T.all_artifact_chunk_requests(), qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_request
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert ready.wait(10), "chunk server could not subscribe"

    def offer(self, m: Manifest, data: bytes) -> None:
        self.files[(m.name, m.version)] = (data, m.chunk_bytes)

    def asked(self, name: str) -> list[ChunkRequest]:
        with self._lock:
            return [r for r in self.requests if r.name == name]

    def _on_request(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        req = ChunkRequest.model_validate_json(msg.payload)
        with self._lock:
            self.requests.append(req)
        found = self.files.get((req.name, req.version))
        if found is None:
            return
        data, size = found
        for i in req.chunks:
            chunk = data[i * size : (i + 1) * size]
            if (req.name, i) in self.truncate_once:
                self.truncate_once.discard((req.name, i))
                chunk = chunk[: len(chunk) // 2]
            self.client.publish(T.artifact_chunk(req.scope, req.kind, req.name, req.version, i), chunk, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Site:
    broker: Mosquitto
    orchestrator: Orchestrator
    nodes: dict[str, NodeProcess]
    chunks: ChunkServer
    reported: Watcher  # ms-a's reported state and status
    errors: Watcher  # ms-a's error reports
    models: dict[str, Path]
    http: str
    stub: pb_grpc.InferenceStub  # the front door's gRPC listener
    key: SiteKey = field(default_factory=lambda: SiteKey.load(site_identity.site().site_key))
    generation: int = field(default_factory=lambda: int(time.time()))

    def publish_model(self, ref: ArtifactRef | None, adapters: dict[str, ArtifactRef] | None = None) -> None:
        """ms-a's own desired-state document naming `ref` as its model, signed as the orchestrator signs it."""
        self.generation += 1
        target = Target(kind="node", name=A)
        doc = DesiredState(site="lab", target=target, generation=self.generation, model=ref, adapters=adapters or {})
        self.errors.publish(T.desired_node(A), site_identity.site().signed(doc), retain=True)

    def manifest(
        self, path: Path, name: str, version: str, key: SiteKey | None = None, header_of: Path | None = None
    ) -> tuple[Manifest, bytes]:
        """Sign and publish (retained) the manifest of `path`, with the header facts of `header_of` (the
        model a truncated file was cut from), as `push-model` would."""
        header = read_model(header_of or path)
        m = build_manifest(
            path,
            "model",
            name,
            version,
            chunk_bytes=DEFAULT_CHUNK_BYTES,
            model_architecture=header.architecture,
            kv_bytes_per_token=header.kv_bytes_per_token,
        )
        m = (key or self.key).sign(m)
        self.errors.publish(T.artifact_manifest(SCOPE, "model", name), m.model_dump_json().encode(), retain=True)
        return m, path.read_bytes()

    def last_reported(self) -> dict[str, Any]:
        got = self.reported.on(T.node_reported(A))
        return got[-1] if got else {}

    def error_messages(self) -> list[str]:
        return [e["message"] for e in self.errors.on(T.errors(A))]

    def serving(self) -> dict[str, list[str]]:
        try:
            with site_identity.site().urlopen(self.http + "/v1/models") as r:
                return {m["id"]: m["nodes"] for m in json.loads(r.read())["data"]}
        except OSError:
            return {}

    def log(self) -> str:
        return self.nodes[A].log()[-4000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("model-switch")
    models_dir = tmp_path_factory.mktemp("models")
    models = {
        "smollm2": resolve_model("smollm2-135m-instruct", models_dir).path,
        "gemma": resolve_model("gemma-3-270m", models_dir).path,
    }
    broker = Mosquitto(tmp)
    grpc_port, http_port = free_port(), free_port()
    store = KeyStore(tmp / "api-keys.db")
    api_key = store.create("harness", collections=["*"], identity=site_identity.HARNESS)[1]
    store.close()
    env = {
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
        "EDGEFLEET_ROUTE_FIRST_TOKEN_TIMEOUT_S": "20",
        "EDGEFLEET_ROUTE_PROBE_INTERVAL_S": "0.5",
    }
    started: list[Any] = []
    nodes: dict[str, NodeProcess] = {}
    try:
        orch = Orchestrator(tmp, broker, env=env)
        started.append(orch)
        chunks = ChunkServer(broker)
        reported = Watcher(broker, f"{T.root}node/{A}/#")
        errors = Watcher(broker, T.errors(A))
        started += [chunks, reported, errors]
        for n in (A, B):
            nodes[n] = NodeProcess(
                tmp, env=node_env(broker, EDGEFLEET_GROUPS="pair", EDGEFLEET_ARTIFACT_RETRY_S="2"), node_id=n
            )
            started.append(nodes[n])
        for node in nodes.values():
            node.wait_serving()
        channel = site_identity.site().grpc_channel(f"127.0.0.1:{grpc_port}", api_key=api_key)
        s = Site(
            broker,
            orch,
            nodes,
            chunks,
            reported,
            errors,
            models,
            f"https://127.0.0.1:{http_port}",
            pb_grpc.InferenceStub(channel),
        )
        ok = wait_for(lambda: s.serving().get("smollm2-135m-instruct") == [A, B], timeout=30)
        assert ok, f"front door does not route to both nodes: {s.serving()}"
        yield s
        channel.close()
    finally:
        for node in nodes.values():  # the ones a test restarted too
            node.stop()
        for part in reversed(started):
            if isinstance(part, Watcher | ChunkServer):
                part.close()
            elif not isinstance(part, NodeProcess):
                part.stop()
        broker.stop()


def _fake_ref(m: Manifest) -> ArtifactRef:
    return ArtifactRef(name=m.name, version=m.version, sha256=m.sha256, size=m.size)


def test_a_model_over_the_memory_budget_is_refused_before_any_chunk(site: Site) -> None:
    size = 1900 * 1024 * 1024  # a signed manifest of a 1.9 GiB model: x86-dev's budget is 2048 MiB
    chunk = 4 * 1024 * 1024
    fake = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(-(-size // chunk))]
    m = site.key.sign(
        Manifest(
            kind="model",
            name="huge",
            version="1.0",
            size=size,
            sha256=hashlib.sha256(b"huge").hexdigest(),
            chunk_bytes=chunk,
            chunk_sha256=fake,
            model_architecture="llama",
            kv_bytes_per_token=23040,
        )
    )
    site.errors.publish(T.artifact_manifest(SCOPE, "model", "huge"), m.model_dump_json().encode(), retain=True)
    site.publish_model(_fake_ref(m))
    refused = lambda: [e for e in site.last_reported().get("errors", []) if "huge@1.0" in e]  # noqa: E731
    assert wait_for(lambda: refused(), timeout=30), site.log()
    message = refused()[0]
    for figure in ("allows 2048 MiB", "needs", "model 1900 MiB", "KV cache 180 MiB", "overhead 150 MiB"):
        assert figure in message, message
    assert any("huge@1.0" in e and "2048 MiB" in e for e in site.error_messages())
    assert site.chunks.asked("huge") == []  # not one chunk asked for
    assert site.last_reported()["model"] == "smollm2-135m-instruct"


def test_a_model_signed_by_another_key_is_refused(site: Site, tmp_path: Path) -> None:
    m, _ = site.manifest(site.models["smollm2"], "resigned", "1.0", key=SiteKey.generate())
    site.publish_model(_fake_ref(m))
    assert wait_for(lambda: any("resigned@1.0" in e for e in site.error_messages()), timeout=30), site.log()
    assert any(e["code"] == "bad_signature" and "resigned" in e["message"] for e in site.errors.on(T.errors(A)))
    assert site.chunks.asked("resigned") == []
    assert site.last_reported()["model"] == "smollm2-135m-instruct"


def test_a_truncated_model_fails_its_check_and_the_node_goes_back_by_itself(site: Site, tmp_path: Path) -> None:
    half = tmp_path / "half.gguf"
    half.write_bytes(site.models["smollm2"].read_bytes()[: 40 * DEFAULT_CHUNK_BYTES])  # header whole, tensors cut
    m, data = site.manifest(half, "half", "1.0", header_of=site.models["smollm2"])
    site.chunks.offer(m, data)
    site.chunks.truncate_once.add(("half", 1))  # one chunk cut short in transit: refused, asked for again
    pid = site.nodes[A].proc.pid
    site.publish_model(_fake_ref(m))
    refused = lambda: [e for e in site.last_reported().get("errors", []) if "half@1.0" in e]  # noqa: E731
    assert wait_for(lambda: refused(), timeout=SWITCH_S), site.log()
    assert "check failed" in refused()[0] and "previous model serves again" in refused()[0]
    assert any("chunk 1 is" in e for e in site.error_messages()), "the short chunk was refused"
    # the reported state carries the refusal as soon as the node is back; the errors topic gets it once the
    # node's MQTT link is up again, which may come after that report
    assert wait_for(lambda: any("half@1.0 refused" in e for e in site.error_messages()), timeout=30), site.log()
    site.nodes[A].wait_serving()
    assert site.nodes[A].proc.pid == pid  # executed again in place, never exited
    assert site.nodes[A].info().model.name == "smollm2-135m-instruct"
    assert site.last_reported()["model"] == "smollm2-135m-instruct"
    assert not any(p.name.startswith("half@") for p in (site.nodes[A].data_dir / "models").glob("*"))


def _stream(site: Site, stop: threading.Event, failures: list[str], served: list[str]) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        req = pb.GenerateRequest(prompt=f"Count slowly: {i}, {i + 1},", max_tokens=24, temperature=0)
        try:
            call = site.stub.Generate(req, timeout=60)
            text = "".join(chunk.text for chunk in call)
            served.append(str(dict(call.initial_metadata()).get(NODE_KEY, "?")))
            assert text
        except grpc.RpcError as e:
            failures.append(f"{e.code()}: {e.details()}")


def test_a_switch_while_clients_stream_loses_no_request(site: Site) -> None:
    m, data = site.manifest(site.models["gemma"], "gemma-3-270m", "1.0")
    site.chunks.offer(m, data)
    stop, failures, served = threading.Event(), list[str](), list[str]()
    clients = [threading.Thread(target=_stream, args=(site, stop, failures, served)) for _ in range(2)]
    for c in clients:
        c.start()
    try:
        assert wait_for(lambda: len(served) >= 4, timeout=60), failures
        started = time.monotonic()
        site.publish_model(_fake_ref(m))
        assert wait_for(lambda: site.chunks.asked("gemma-3-270m"), timeout=30), site.log()

        def fetched() -> bool:
            reports = site.reported.on(T.node_reported(A))
            return any(
                r.get("transfers", {}).get("model/gemma-3-270m", {}).get("state") == "installed" for r in reports
            )

        assert wait_for(fetched, timeout=SWITCH_S), site.log()
        transfer_s = time.monotonic() - started
        assert wait_for(lambda: site.last_reported().get("model") == "gemma-3-270m@1.0", timeout=SWITCH_S), site.log()
        switched_s = time.monotonic() - started
        assert wait_for(lambda: site.serving().get("gemma-3-270m@1.0") == [A], timeout=30), site.serving()
        before = len(served)
        assert wait_for(lambda: len(served) >= before + 4, timeout=60), failures
    finally:
        stop.set()
        for c in clients:
            c.join(90)
    assert failures == [], failures
    assert A in served and B in served
    assert site.serving().get("smollm2-135m-instruct") == [B]
    assert site.nodes[A].info().model.name == "gemma-3-270m@1.0"
    print(
        f"\nmodel switch, gemma-3-270m ({m.size / 1e6:.0f} MB, {m.chunk_count} chunks): transfer {transfer_s:.1f} s, "
        f"transfer + switch {switched_s:.1f} s, {len(served)} requests served, {len(failures)} failed"
    )


def test_the_switch_survives_a_restart_and_goes_back_without_a_download(site: Site, tmp_path: Path) -> None:
    node = site.nodes[A]
    node.stop()
    site.nodes[A] = node = node.restarted()
    node.wait_serving()
    assert node.info().model.name == "gemma-3-270m@1.0"  # the committed model, from node.db
    asked = len(site.chunks.asked("gemma-3-270m"))
    # back to the node's own model, with an adapter built for it
    lora = write_lora(site.models["smollm2"], tmp_path / "fix.gguf", rank=8, seed=3)
    fit = read_lora(lora)
    adapter = site.key.sign(
        build_manifest(lora, "adapter", "fix", "1.0", base_architecture=fit.architecture, base_tensors=fit.fits())
    )
    site.chunks.offer(adapter, lora.read_bytes())
    site.errors.publish(T.artifact_manifest(SCOPE, "adapter", "fix"), adapter.model_dump_json().encode(), retain=True)
    fix = {"fix": _fake_ref(adapter)}
    site.publish_model(None, fix)
    own = lambda: site.last_reported().get("model") == "smollm2-135m-instruct"  # noqa: E731
    assert wait_for(lambda: own() and site.last_reported()["adapters"] == {"fix": "1.0"}, timeout=SWITCH_S), site.log()
    gemma = next(p for p in (node.data_dir / "models").glob("gemma-3-270m@1.0-*.gguf"))  # kept: one model back
    sha = hashlib.sha256(gemma.read_bytes()).hexdigest()
    site.publish_model(ArtifactRef(name="gemma-3-270m", version="1.0", sha256=sha, size=gemma.stat().st_size), fix)
    assert wait_for(lambda: site.last_reported().get("model") == "gemma-3-270m@1.0", timeout=SWITCH_S), site.log()
    assert len(site.chunks.asked("gemma-3-270m")) == asked  # from disk: no chunk asked for
    # the adapter built for the old base is unloaded, and says so
    unloaded = lambda: [e for e in site.error_messages() if e.startswith("adapter fix@1.0 unloaded")]  # noqa: E731
    assert wait_for(unloaded, timeout=30), site.error_messages()
    assert site.last_reported()["adapters"] == {}
