"""Authorization at the front door: who may call (the certificate's kind), within which limits, and
which knowledge a key may read.

A real orchestrator with API keys over TLS (gRPC takes keys; HTTPS takes keys or site
certificates), a key database of its own, client certificates without a bound key limited to 3
requests a minute, and a plaintext metrics listener; the package's nodes (fd-a, fd-b) behind it,
with two collections ingested on fd-a. Certificates of every kind come from the session's site PKI.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.orchestrator.api_keys import KeyStore
from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity
from tests.conftest import BIN, free_port, wait_for
from tests.mqtt_support import Orchestrator
from tests.orchestrator.front_door.conftest import FRONT_DOOR_ENV, Site
from tests.security.tls_support import https_json

COLLECTION_A, COLLECTION_B, NO_SUCH = "authz-a", "authz-b", "authz-c"
IDENTITY_RPM = 3
ABSTAIN_TEXT = "The documents do not cover this."  # a node's answer when its documents do not cover a question


@dataclass
class Authz:
    orchestrator: Orchestrator
    http: str
    metrics_url: str
    stub: pb_grpc.InferenceStub
    tokens: dict[str, str]
    model: str = ""

    def https(self, path: str, bundle: Path | None = None, token: str | None = None,
              body: dict[str, Any] | None = None) -> tuple[int, Any]:  # fmt: skip
        """(status, body) of a request showing `bundle`'s certificate (None: none) and/or a bearer key."""
        return https_json(self.http + path, site_identity.site().harness_dir / "ca.crt", bundle, body, token)

    def chat(self, bundle: Path | None = None, token: str | None = None, **extra: Any) -> tuple[int, Any]:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}
        return self.https("/v1/chat/completions", bundle, token, body)

    def retrieve(self, key: str, collection: str) -> grpc.RpcError | pb.RetrieveResponse:
        md = (("authorization", f"Bearer {self.tokens[key]}"),)
        try:
            return self.stub.Retrieve(pb.RetrieveRequest(query="oil", collection=collection), timeout=30, metadata=md)
        except grpc.RpcError as e:
            return e

    def routed_requests(self) -> float:
        """Requests the front door sent (or tried to send) to a node, from the metrics listener."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("edgefleet_front_door_requests_total{"))  # fmt: skip


def _identity(name: str, kind: str, role: str | None = None) -> Path:
    """A site certificate of `kind` (issued now), as an enrollment bundle."""
    pki = site_identity.site().pki
    pki.issue(name, kind, force=True, role=role)
    return pki.bundle_dir(name)


def _kindless(name: str, tmp: Path) -> Path:
    """A certificate of the site CA without an edgefleet kind (issued before roles existed)."""
    pki = site_identity.site().pki
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki._leaf(name, key.public_key(), [x509.DNSName(name)], client=True, server=False)
    bundle = tmp / name
    bundle.mkdir()
    (bundle / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (bundle / "client.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return bundle


@pytest.fixture(scope="module")
def authz(site: Site) -> Iterator[Authz]:
    tmp = site.tmp / "authz"
    tmp.mkdir()
    db = tmp / "api-keys.db"
    store = KeyStore(db)
    tokens = {
        "app": store.create("app")[1],  # the default: no collection
        "scoped": store.create("scoped", collections=[COLLECTION_A])[1],
        "everything": store.create("everything", collections=["*"])[1],
    }
    store.create("harness-limits", identity=site_identity.HARNESS, collections=["*"])  # the harness unlimited
    store.create("bound-limits", rpm=2, collections=[COLLECTION_A], identity="authz-bound")
    store.create("cut-limits", identity="authz-cut")
    store.revoke("cut-limits")
    store.close()
    for collection in (COLLECTION_A, COLLECTION_B):
        doc = pb.Document(id="pump", text=f"# Pump in {collection}\nThe pump needs fresh oil every 200 hours.")
        site.nodes["fd-a"].stub.Ingest(pb.IngestRequest(collection=collection, documents=[doc]), timeout=60)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **FRONT_DOOR_ENV,
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
        "EDGEFLEET_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "EDGEFLEET_FRONT_DOOR_AUTH": "keys",
        "EDGEFLEET_API_KEYS_DB": str(db),
        "EDGEFLEET_FRONT_DOOR_IDENTITY_RPM": str(IDENTITY_RPM),
    }
    orch = Orchestrator(tmp, site.broker, db=tmp / "registry.db", env=env)
    channel = site_identity.site().grpc_channel(f"127.0.0.1:{grpc_port}", client_cert=False)
    a = Authz(orch, f"https://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics",
              pb_grpc.InferenceStub(channel), tokens)  # fmt: skip
    try:
        ready = wait_for(
            lambda: all(
                isinstance(a.retrieve("everything", c), pb.RetrieveResponse) for c in (COLLECTION_A, COLLECTION_B)
            ),
            timeout=30,
            interval=0.2,
        )
        assert ready, orch.log_path.read_text(errors="replace")[-3000:]
        a.model = next(
            m["id"] for m in a.https("/v1/models", token=tokens["everything"])[1]["data"] if ":" not in m["id"]
        )
        yield a
    finally:
        channel.close()
        orch.stop()


@pytest.mark.parametrize("kind", ["sensor", "node", "kindless"])
def test_a_certificate_of_no_client_kind_is_refused_even_with_a_valid_key(authz: Authz, kind: str,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    """A sensor's certificate was an unlimited front-door client: now sensors, nodes and
    certificates naming no kind get 403 naming the identity, with or without a key beside them."""
    name = f"authz-{kind}"
    bundle = _kindless(name, tmp_path) if kind == "kindless" else _identity(name, kind)
    for token in (None, authz.tokens["everything"]):
        status, body = authz.https("/v1/models", bundle, token)
        assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED, body
        assert f"'{name}' may not list models on the front door" in body["error"]["message"]
        status, body = authz.chat(bundle, token)
        assert status == 403 and "may not generate" in body["error"]["message"], body
    if kind == "kindless":
        assert "re-enroll" in body["error"]["message"]


def test_operator_certificates_are_clients_with_default_or_bound_limits(authz: Authz) -> None:
    """Operators (a viewer too) and the orchestrator may generate; without a bound key within the
    default rpm; with one (`keys create --identity`) within its limits and collections; a revoked
    bound key shuts the certificate out."""
    viewer = _identity("authz-viewer", "operator", role="viewer")
    status, body = authz.chat(viewer)
    assert status == 200 and body["choices"], body
    for _ in range(IDENTITY_RPM - 1):
        assert authz.https("/v1/models", viewer)[0] == 200
    status, body = authz.https("/v1/models", viewer)
    assert status == 429 and "EDGEFLEET_FRONT_DOOR_IDENTITY_RPM" in body["error"]["message"], body

    orchestrator = site_identity.site().pki.bundle_dir("orchestrator")
    assert authz.https("/v1/models", orchestrator)[0] == 200
    status, body = authz.chat(orchestrator, collection=COLLECTION_A)  # no knowledge grant
    assert status == 403 and f"may not read collection '{COLLECTION_A}'" in body["error"]["message"], body

    bound = _identity("authz-bound", "operator")
    status, body = authz.chat(bound, collection=COLLECTION_B)
    assert status == 403 and "the API key 'bound-limits' bound to it" in body["error"]["message"], body
    assert authz.https("/v1/models", bound)[0] == 200
    status, body = authz.https("/v1/models", bound)
    assert status == 429 and "over its 2 requests per minute" in body["error"]["message"], body

    status, body = authz.https("/v1/models", _identity("authz-cut", "operator"), authz.tokens["everything"])
    assert status == 403 and "'cut-limits' bound to it is revoked" in body["error"]["message"], body


def test_metrics_need_a_metrics_grant_on_the_public_listener(authz: Authz) -> None:
    """/metrics on the public listener listed every API key's name to anyone: now it needs an
    operator or orchestrator certificate; Prometheus scrapes the plaintext metrics listener."""
    status, _ = authz.https("/metrics")
    assert status == 401
    status, body = authz.https("/metrics", token=authz.tokens["everything"])
    assert status == 403 and "api-key 'everything' may not read metrics" in body["error"]["message"], body
    status, body = authz.https("/metrics", _identity("authz-metrics-sensor", "sensor"))
    assert status == 403, body
    status, text = authz.https("/metrics", site_identity.site().harness_dir)
    assert status == 200 and "edgefleet_front_door_key_requests_total" in text
    with urllib.request.urlopen(authz.metrics_url, timeout=10) as r:
        assert r.status == 200 and "edgefleet_front_door_requests_total" in r.read().decode()


def test_a_key_reads_only_its_collections_and_cannot_probe_for_others(authz: Authz) -> None:
    """Any key could Retrieve raw chunks of any collection, and a 404 told which exist. Now a key
    reads only its allow-list (a new key: none); a forbidden collection and one that does not exist
    get the same 403, before any node is asked."""
    found = authz.retrieve("scoped", COLLECTION_A)
    assert isinstance(found, pb.RetrieveResponse) and found.chunks
    routed = authz.routed_requests()
    refusals = {}
    for key, collection in (("scoped", COLLECTION_B), ("scoped", NO_SUCH), ("app", COLLECTION_A)):
        e = authz.retrieve(key, collection)
        assert isinstance(e, grpc.RpcError), (key, collection)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and sent_code(e) == ErrorCode.PERMISSION_DENIED
        refusals[(key, collection)] = e.details()
    forbidden, missing = refusals[("scoped", COLLECTION_B)], refusals[("scoped", NO_SUCH)]
    assert forbidden.replace(COLLECTION_B, "?") == missing.replace(NO_SUCH, "?"), (forbidden, missing)
    assert "allowed: none" in refusals[("app", COLLECTION_A)]
    md = (("authorization", f"Bearer {authz.tokens['scoped']}"),)
    with pytest.raises(grpc.RpcError) as g:
        req = pb.GenerateRequest(prompt="Oil?", max_tokens=2, retrieval=pb.Retrieval(collection=COLLECTION_B))
        list(authz.stub.Generate(req, timeout=30, metadata=md))
    assert g.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status, body = authz.chat(token=authz.tokens["scoped"], collection=NO_SUCH)
    assert status == 403 and body["error"]["code"] == ErrorCode.PERMISSION_DENIED, body
    assert authz.routed_requests() == routed, "a refused request reached a node"
    status, body = authz.chat(token=authz.tokens["scoped"], collection=COLLECTION_A)
    assert status == 200 and body["choices"], body


def test_a_knowledge_answer_carries_its_citations_in_the_edgefleet_object(authz: Authz) -> None:
    """Cite or abstain through the front door: the citations (chunk, document, page, quote) and `abstained`."""
    token = authz.tokens["everything"]
    oil = [{"role": "user", "content": "How often does the pump need fresh oil?"}]
    status, body = authz.chat(token=token, collection=COLLECTION_A, messages=oil, max_tokens=16, temperature=0)
    assert status == 200, body
    e = body["edgefleet"]
    assert not e["abstained"] and e["source_chunk_ids"] == [f"{COLLECTION_A}/pump#0"], e
    quote = "The pump needs fresh oil every 200 hours."
    cite = {"n": 1, "chunk_id": f"{COLLECTION_A}/pump#0", "document_id": "pump", "page": None, "quote": quote}
    assert e["citations"] == [cite], body
    a12 = [{"role": "user", "content": "What does alarm A12 on the TC-5 mean?"}]
    status, body = authz.chat(token=token, collection=COLLECTION_A, messages=a12, temperature=0)
    assert status == 200 and body["choices"][0]["message"]["content"] == ABSTAIN_TEXT, body
    assert body["edgefleet"]["abstained"] and body["edgefleet"]["citations"] == []


def _without_crl() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    harness = {k: v for k, v in site_identity.site().harness_env().items() if k != "EDGEFLEET_TLS_CRL_FILE"}
    return {**env, **harness, "EDGEFLEET_CLI_CONFIG": os.devnull, "EDGEFLEET_MQTT_URL": "mqtts://127.0.0.1:1"}


@pytest.mark.parametrize("crl", ["", "/nonexistent/crl.pem"])
def test_a_secure_front_door_without_a_crl_refuses_to_start(tmp_path: Path, crl: str) -> None:
    """Revocation was optional at the front door: a secure orchestrator whose front door listens
    now needs the site's CRL, and says so (exit 2, like the other secure defaults)."""
    env = {**_without_crl(), **({"EDGEFLEET_TLS_CRL_FILE": crl} if crl else {})}
    cmd = [str(BIN / "edgefleet-orchestrator"), "serve", "--registry-db", str(tmp_path / "r.db")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "EDGEFLEET_TLS_CRL_FILE" in r.stderr and "crl.pem" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
