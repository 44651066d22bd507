"""API keys on the front door end to end: a second orchestrator with EDGEFLEET_FRONT_DOOR_AUTH=keys
on the site's broker and nodes; the official `openai` client for HTTP, grpc for gRPC."""

from __future__ import annotations

import argparse
import io
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.fleet import keys_commands
from edgefleet.fleet.site.pki import SitePki
from edgefleet.orchestrator.api_keys import MIGRATIONS, ApiKeyError, KeyStore
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.key_commands import KeyCommands
from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.plumbing.sqlite_db import open_database
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity
from tests.conftest import free_port, wait_for
from tests.mqtt_support import Orchestrator
from tests.orchestrator.front_door.conftest import FRONT_DOOR_ENV, Site


@dataclass
class Keyed:
    orchestrator: Orchestrator
    db: Path
    http: str
    channel: grpc.Channel
    tokens: dict[str, str]

    def cli(self, *argv: str) -> str:
        """`edgefleet fleet keys …` on this orchestrator's key database: the CLI's code and the
        orchestrator's key commands, in this process (both orchestrators here answer the site's commands)."""
        parser = argparse.ArgumentParser()
        keys_commands.add_parsers(parser.add_subparsers(dest="fleet_command"))
        table, keys = CommandTable(), KeyCommands(self.db)
        keys.register(table)
        out = io.StringIO()
        try:
            assert keys_commands.execute(parser.parse_args(["keys", *argv]), table.dispatch_command, out) == 0
        finally:
            keys.close()
        return out.getvalue()

    def get(self, path: str, token: str | None = None, cert: bool = False) -> tuple[int, Any, dict[str, str]]:
        req = urllib.request.Request(self.http + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with site_identity.site().urlopen(req, client_cert=cert) as r:
                body = r.read()
                return r.status, json.loads(body) if path.startswith("/v1/") else body.decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def client(self, name: str) -> openai.OpenAI:
        return site_identity.site().openai(self.http + "/v1", self.tokens[name], client_cert=False)

    def stub(self) -> pb_grpc.InferenceStub:
        return pb_grpc.InferenceStub(self.channel)


@pytest.fixture(scope="module")
def keyed(site: Site) -> Iterator[Keyed]:
    tmp = site.tmp / "keyed"
    tmp.mkdir()
    db = tmp / "api-keys.db"
    store = KeyStore(db)
    tokens = {
        "good": store.create("good")[1],
        "victim": store.create("victim")[1],
        "slow": store.create("slow", rpm=2)[1],
        "narrow": store.create("narrow", ["other:x"])[1],
    }
    store.close()
    grpc_port, http_port = free_port(), free_port()
    env = {
        **FRONT_DOOR_ENV,
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
        "EDGEFLEET_FRONT_DOOR_AUTH": "keys",
        "EDGEFLEET_API_KEYS_DB": str(db),
    }
    orch = Orchestrator(tmp, site.broker, db=tmp / "registry.db", env=env)
    channel = site_identity.site().grpc_channel(f"127.0.0.1:{grpc_port}", client_cert=False)
    k = Keyed(orch, db, f"https://127.0.0.1:{http_port}", channel, tokens)
    try:
        ok = wait_for(lambda: len(_served(k)) >= 1, timeout=30)
        assert ok, orch.log_path.read_text(errors="replace")[-3000:]
        yield k
    finally:
        k.channel.close()
        orch.stop()


def _served(k: Keyed) -> list[str]:
    try:
        status, body, _ = k.get("/v1/models", k.tokens["good"])
    except OSError:
        return []
    return [m["id"] for m in body["data"] if ":" not in m["id"] and m["nodes"]] if status == 200 else []


def _chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0, seed=1
    )


def test_secure_site_requires_a_key_or_a_site_certificate(site: Site) -> None:
    """The default (secure) front door: no certificate and no key is 401; the harness certificate
    alone is enough (every other front-door test uses it)."""
    assert "front door requires API keys" in site.orchestrator_log()
    assert "FRONT DOOR AUTHENTICATION IS OFF" not in site.orchestrator_log()
    with pytest.raises(urllib.error.HTTPError) as e:
        site_identity.site().urlopen(site.http + "/v1/models", client_cert=False)
    assert e.value.code == 401
    with site_identity.site().urlopen(site.http + "/v1/models") as r:
        assert r.status == 200


def test_plaintext_and_foreign_certificates_are_refused(site: Site, tmp_path: Path) -> None:
    """gRPC without TLS, or with a certificate from another CA, never reaches the front door."""
    plain = grpc.insecure_channel(site.grpc_address)
    with pytest.raises(grpc.RpcError) as e:
        list(pb_grpc.InferenceStub(plain).Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=5))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    plain.close()
    other = SitePki(tmp_path / "other")
    other.init("lab", [])
    other.issue("mallory", "operator")
    b = other.bundle_dir("mallory")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(b / "ca.crt").read_bytes(),
        private_key=(b / "client.key").read_bytes(),
        certificate_chain=(b / "client.crt").read_bytes(),
    )
    foreign = grpc.secure_channel(site.grpc_address, creds)  # trusts its own CA: the handshake fails
    with pytest.raises(grpc.RpcError) as e:
        list(pb_grpc.InferenceStub(foreign).Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=5))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    foreign.close()
    ca = (site_identity.site().harness_dir / "ca.crt").read_bytes()
    mixed = grpc.secure_channel(
        site.grpc_address,
        grpc.ssl_channel_credentials(ca, (b / "client.key").read_bytes(), (b / "client.crt").read_bytes()),
    )  # trusts the site, shows a foreign certificate: refused in the handshake
    with pytest.raises(grpc.RpcError) as e:
        list(pb_grpc.InferenceStub(mixed).Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=5))
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    mixed.close()


def _temp_identity(name: str, kind: str = "operator") -> Path:
    test_site = site_identity.site()
    test_site.pki.issue(name, kind, force=True)
    return test_site.pki.bundle_dir(name)


def _https(url: str, bundle: Path, token: str | None = None) -> int:
    ctx = ssl.create_default_context(cafile=str(bundle / "ca.crt"))
    ctx.load_cert_chain(str(bundle / "client.crt"), str(bundle / "client.key"))
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_revoked_site_certificate_is_refused_on_https_within_a_second(site: Site) -> None:
    bundle = _temp_identity("temp-op")
    assert _https(site.http + "/v1/models", bundle) == 200
    site_identity.site().pki.revoke("temp-op")
    # the CRL is reread within 0.5 s of a change: refused well inside 1.5 s
    assert wait_for(lambda: _https(site.http + "/v1/models", bundle) == 401, timeout=1.5, interval=0.05)
    assert _https(site.http + "/v1/models", bundle, site.api_key) == 401  # a valid key beside it: still refused


@pytest.fixture(scope="module")
def certified(site: Site) -> Iterator[tuple[Orchestrator, str]]:
    """A third orchestrator whose gRPC listener requires site client certificates (mutual TLS)."""
    tmp = site.tmp / "certified"
    tmp.mkdir()
    grpc_port = free_port()
    env = {
        **FRONT_DOOR_ENV,
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_FRONT_DOOR_CLIENT_CERTS": "true",
    }
    orch = Orchestrator(tmp, site.broker, db=tmp / "registry.db", env=env)
    address = f"127.0.0.1:{grpc_port}"
    try:
        channel = site_identity.site().grpc_channel(address)
        ok = wait_for(lambda: _generate(channel) == grpc.StatusCode.OK, timeout=30, interval=0.3)
        channel.close()
        assert ok, orch.log_path.read_text(errors="replace")[-3000:]
        yield orch, address
    finally:
        orch.stop()


def _generate(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        list(pb_grpc.InferenceStub(channel).Generate(pb.GenerateRequest(prompt="hi", max_tokens=1), timeout=30))
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]


def test_grpc_with_client_certificates_required(certified: tuple[Orchestrator, str]) -> None:
    """EDGEFLEET_FRONT_DOOR_CLIENT_CERTS=true: the certificate is the credential (no key needed);
    no certificate fails the handshake; a sensor's is refused (PERMISSION_DENIED); a revoked one is
    refused within a second."""
    _, address = certified
    bundle = _temp_identity("temp-grpc")
    creds = grpc.ssl_channel_credentials(
        (bundle / "ca.crt").read_bytes(), (bundle / "client.key").read_bytes(), (bundle / "client.crt").read_bytes()
    )
    channel = grpc.secure_channel(address, creds)
    assert _generate(channel) == grpc.StatusCode.OK
    no_cert = site_identity.site().grpc_channel(address, client_cert=False)
    assert _generate(no_cert) == grpc.StatusCode.UNAVAILABLE
    no_cert.close()
    sensor = _temp_identity("temp-grpc-sensor", "sensor")  # a site certificate, but no client's
    sensor_channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(
            (sensor / "ca.crt").read_bytes(), (sensor / "client.key").read_bytes(), (sensor / "client.crt").read_bytes()
        ),
    )
    assert _generate(sensor_channel) == grpc.StatusCode.PERMISSION_DENIED
    sensor_channel.close()
    site_identity.site().pki.revoke("temp-grpc")
    assert wait_for(lambda: _generate(channel) == grpc.StatusCode.UNAUTHENTICATED, timeout=1.5, interval=0.05)
    channel.close()


def test_no_key_is_refused(keyed: Keyed) -> None:
    status, body, headers = keyed.get("/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert body["error"]["code"] == ErrorCode.UNAUTHENTICATED
    assert headers.get("WWW-Authenticate") == "Bearer"
    bad = site_identity.site().openai(keyed.http + "/v1", "ef-000000000000-wrong", client_cert=False)
    with pytest.raises(openai.AuthenticationError) as refused:
        _chat(bad, "any")
    assert refused.value.code == "unauthenticated"
    with pytest.raises(grpc.RpcError) as e:
        list(keyed.stub().Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and sent_code(e.value) == ErrorCode.UNAUTHENTICATED
    # health stays open; /metrics needs an operator's (or the orchestrator's) certificate
    health = health_pb2_grpc.HealthStub(keyed.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status is not None
    assert keyed.get("/metrics")[0] == 401
    assert keyed.get("/metrics", cert=True)[0] == 200


def test_good_key_answers_on_http_and_grpc(keyed: Keyed) -> None:
    model = _served(keyed)[0]
    resp = _chat(keyed.client("good"), model)
    assert resp.choices[0].message.content is not None
    md = (("authorization", f"Bearer {keyed.tokens['good']}"),)
    chunks = list(keyed.stub().Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=30, metadata=md))
    assert chunks and chunks[-1].usage.completion_tokens > 0
    metrics = keyed.get("/metrics", cert=True)[1]
    assert 'edgefleet_front_door_key_requests_total{key="good"}' in metrics
    assert 'edgefleet_front_door_key_tokens_total{key="good"}' in metrics

    def usage() -> dict[str, Any]:
        return {k["name"]: k for k in json.loads(keyed.cli("list", "--json"))}

    assert wait_for(lambda: usage()["good"]["requests"] >= 2 and usage()["good"]["tokens"] > 0, timeout=5)
    table = keyed.cli("list")
    assert "good" in table and keyed.tokens["good"] not in table


def test_revoked_key_is_refused_within_a_second(keyed: Keyed) -> None:
    token = keyed.tokens["victim"]
    assert keyed.get("/v1/models", token)[0] == 200
    keyed.cli("revoke", "victim")
    revoked_at = time.monotonic()
    while keyed.get("/v1/models", token)[0] == 200:
        assert time.monotonic() - revoked_at < 1.0, "a revoked key still answers after 1 s"
        time.sleep(0.05)
    status, body, _ = keyed.get("/v1/models", token)
    assert status == 401 and "revoked" in body["error"]["message"]
    md = (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as e:
        keyed.stub().Embed(pb.EmbedRequest(texts=["x"]), timeout=10, metadata=md)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_key_over_its_rpm_gets_429(keyed: Keyed) -> None:
    token = keyed.tokens["slow"]
    assert keyed.get("/v1/models", token)[0] == 200
    assert keyed.get("/v1/models", token)[0] == 200
    status, body, headers = keyed.get("/v1/models", token)
    assert status == 429 and body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    md = (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as e:
        keyed.stub().Embed(pb.EmbedRequest(texts=["x"]), timeout=10, metadata=md)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and sent_code(e.value) == ErrorCode.RATE_LIMITED


def test_model_not_in_allow_list_gets_403(keyed: Keyed) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        _chat(keyed.client("narrow"), _served(keyed)[0])
    assert "may not use" in str(e.value) and e.value.code == "permission_denied"
    assert e.value.body["type"] == "permission_error"  # type: ignore[index]
    md = (("authorization", f"Bearer {keyed.tokens['narrow']}"),)
    with pytest.raises(grpc.RpcError) as g:
        list(keyed.stub().Generate(pb.GenerateRequest(prompt="hi", adapter="y", max_tokens=2), timeout=10, metadata=md))
    assert g.value.code() == grpc.StatusCode.PERMISSION_DENIED and sent_code(g.value) == ErrorCode.PERMISSION_DENIED


def test_secrets_never_in_logs(keyed: Keyed, site: Site) -> None:
    logs = keyed.orchestrator.log_path.read_text(errors="replace") + site.orchestrator_log()
    for token in keyed.tokens.values():
        assert token.split("-", 2)[2] not in logs


def test_keys_made_before_collections_read_none_and_one_live_key_per_identity(tmp_path: Path) -> None:
    """The migration gives existing keys no collection (least privilege); `*` means all; a bad
    collection name is refused; an identity has one live bound key at a time."""
    db = tmp_path / "api-keys.db"
    old = open_database(db, MIGRATIONS[:1], "NORMAL", incremental_vacuum=False)
    old.conn.execute("INSERT INTO api_keys (name, key_id, secret_hash, created_at) VALUES ('legacy', 'abc', 'x', 0)")
    old.conn.commit()
    old.conn.close()
    store = KeyStore(db)
    try:
        legacy = store.get("legacy")
        assert legacy.collections == () and legacy.identity == "" and not legacy.reads("manuals")
        assert store.create("fresh")[0].collections == ()
        wide = store.create("wide", collections=["manuals", "*"])[0]
        assert wide.collections == ("*",) and wide.reads("anything")
        with pytest.raises(ApiKeyError, match=r"--collections '\.\./etc'"):
            store.create("bad", collections=["../etc"])
        assert store.create("alice-limits", identity="alice", rpm=5)[0].public()["identity"] == "alice"
        with pytest.raises(ApiKeyError, match="'alice-limits' is bound to identity 'alice'"):
            store.create("again", identity="alice")
        store.revoke("alice-limits")
        assert store.create("again", identity="alice")[0].identity == "alice"
    finally:
        store.close()


def test_operators_ingest_pdfs_through_the_front_door_to_the_nodes_holding_the_collection(
    site: Site, certified: tuple[Orchestrator, str]
) -> None:
    """Ingest at the front door: an operator's PDF bytes go to every node holding the collection (each
    reads it itself: same id and pages); a viewer, an API key and a collection no node holds are refused;
    a scan refuses the request on every node, nothing written. DeleteDocuments goes to the same nodes."""
    from tests.plumbing.test_document_text import pdf_bytes

    _, address = certified
    seed = pb.Document(id="seed", text="The coolant pump is checked monthly.")
    for n in ("fd-a", "fd-b"):
        site.nodes[n].stub.Ingest(pb.IngestRequest(collection="fd-manuals", documents=[seed]), timeout=60)
    channel = site_identity.site().grpc_channel(address)  # the harness: an operator of role admin
    stub = pb_grpc.InferenceStub(channel)
    doc = pb.Document(id="manuals/pump 7.pdf", data=pdf_bytes(["Cover.", "Torque the impeller nut to 40 Nm."]))
    request = pb.IngestRequest(collection="fd-manuals", documents=[doc])

    def ingest(req: pb.IngestRequest = request, s: pb_grpc.InferenceStub = stub) -> tuple[str, Any]:
        try:
            resp, call = s.Ingest.with_call(req, timeout=60)
        except grpc.RpcError as e:
            return e.code().name, e.details()
        return dict(call.initial_metadata()).get("x-edgefleet-node", ""), resp

    # the front door's probe learns the collections ingested on the nodes within its interval
    assert wait_for(lambda: ingest()[0] == "fd-a,fd-b", timeout=20, interval=0.3), ingest()
    for n in ("fd-a", "fd-b"):
        hit = (
            site.nodes[n]
            .stub.Retrieve(
                pb.RetrieveRequest(query="impeller nut torque", collection="fd-manuals", top_k=1), timeout=30
            )
            .chunks[0]
        )
        assert (hit.doc_id, hit.metadata["page"]) == ("manuals/pump 7.pdf", "2")
    scan = pb.IngestRequest(collection="fd-manuals", documents=[pb.Document(id="scan.pdf", data=pdf_bytes([""]))])
    code, details = ingest(scan)
    assert code == "INVALID_ARGUMENT" and "refused by fd-a" in details and "no text layer" in details, details
    code, details = ingest(pb.IngestRequest(collection="nowhere", documents=[seed]))
    assert "no online node holds collection 'nowhere'" in details, (code, details)

    viewer = site_identity.site().pki
    viewer.issue("fd-viewer", "operator", force=True, role="viewer")
    bundle = viewer.bundle_dir("fd-viewer")
    creds = grpc.ssl_channel_credentials(
        (bundle / "ca.crt").read_bytes(), (bundle / "client.key").read_bytes(), (bundle / "client.crt").read_bytes()
    )
    viewer_channel = grpc.secure_channel(address, creds)
    code, details = ingest(s=pb_grpc.InferenceStub(viewer_channel))
    assert code == "PERMISSION_DENIED" and "write knowledge" in details, details
    delete = pb.DeleteDocumentsRequest(collection="fd-manuals", ids=["manuals/pump 7.pdf"])
    with pytest.raises(grpc.RpcError) as refused:
        pb_grpc.InferenceStub(viewer_channel).DeleteDocuments(delete, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    viewer_channel.close()

    # DeleteDocuments goes the same way: every node holding the collection deletes it, named in the answer
    deleted, call = stub.DeleteDocuments.with_call(delete, timeout=60)
    assert deleted.deleted == 1 and dict(call.initial_metadata()).get("x-edgefleet-node") == "fd-a,fd-b"
    for n in ("fd-a", "fd-b"):
        left = site.nodes[n].stub.Retrieve(
            pb.RetrieveRequest(query="impeller nut torque", collection="fd-manuals", top_k=5), timeout=30
        )
        assert [c.doc_id for c in left.chunks] == ["seed"], (n, left)
    with pytest.raises(grpc.RpcError) as nowhere:
        stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="nowhere", ids=["x"]), timeout=30)
    assert nowhere.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no online node holds collection 'nowhere'" in nowhere.value.details()
    channel.close()
    # API keys (for generation) get no knowledge-write grant at the front door
    from edgefleet.proto.access import FRONT_DOOR_GRANTS, Kind, Permission, Principal, allowed

    assert not allowed(FRONT_DOOR_GRANTS, Principal("k", Kind.API_KEY), Permission.KNOWLEDGE_WRITE)
