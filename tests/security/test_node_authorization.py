"""Who may call a node: a real secure node process (mutual TLS) with a real Mosquitto (generated ACL)
and a real orchestrator, each with its enrollment bundle; callers show certificates of every kind.

Sensors and other nodes may call no Inference method; a viewer reads but cannot change knowledge;
operators (role operator) and the orchestrator can. A revoked operator is refused within seconds:
the orchestrator publishes the new CRL over MQTT and the node applies it. A CRL signed by another CA,
or an older one of the site's, is ignored.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.fleet.identity_commands import read_env
from edgefleet.fleet.site.pki import SitePki
from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.plumbing.site_tls import target_name
from edgefleet.proto.access import METHOD_PERMISSION, method_name
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import BIN, NodeProcess, wait_for
from tests.mqtt_support import Orchestrator
from tests.security.tls_support import Client, TlsBroker

NODE = "authz1"
OTHER_NODE = "authz2"
T = Topics.for_site("lab")
DOC = pb.Document(id="note-1", text="The chiller on line 2 was serviced on Monday; the strainer was clean.")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("authz")
    broker = TlsBroker(tmp)
    started: list[Any] = []
    try:
        node_bundle = broker.enroll("node", NODE, "--groups", "line")
        broker.enroll("node", OTHER_NODE)
        broker.enroll("sensor", "probe1")
        broker.enroll("operator", "olivia")  # role operator (the default)
        broker.enroll("operator", "vera", "--role", "viewer")
        broker.enroll("operator", "rex")  # revoked by a test
        broker.enroll("operator", "rhea")  # revoked by another
        first_crl = broker.pki.crl_path.read_bytes()  # the site's CRL before any revocation
        broker.settle()
        # the node's CRL is the one it receives over MQTT (not the test session's EDGEFLEET_TLS_CRL_FILE)
        node_env = {**read_env(node_bundle / "edgefleet.env"), "EDGEFLEET_TLS_CRL_FILE": ""}
        node = NodeProcess(tmp, node_id=NODE, env=node_env)
        started.append(node)
        orch_env = read_env(broker.pki.bundle_dir("orchestrator") / "edgefleet.env")
        started.append(Orchestrator(tmp, broker, env=orch_env))  # type: ignore[arg-type]
        node.wait_serving()
        crl_file = node.data_dir / "crl.pem"
        assert wait_for(crl_file.exists, 20), node.log()[-3000:]  # the orchestrator's CRL reached the node
        yield {"tmp": tmp, "broker": broker, "node": node, "pki": broker.pki, "first_crl": first_crl, "crl": crl_file}
    finally:
        for part in reversed(started):
            part.stop()
        broker.stop()


@pytest.fixture(autouse=True)
def _close_channels(site: dict[str, Any]) -> Iterator[None]:
    yield
    for channel in site.pop("channels", []):
        channel.close()


def stub(site: dict[str, Any], identity: str) -> pb_grpc.InferenceStub:
    """The node's Inference service, called with `identity`'s certificate."""
    bundle: Path = site["pki"].bundle_dir(identity)
    creds = grpc.ssl_channel_credentials(
        (bundle / "ca.crt").read_bytes(), (bundle / "client.key").read_bytes(), (bundle / "client.crt").read_bytes()
    )
    channel = grpc.secure_channel(site["node"].address, creds, options=target_name(NODE))
    site.setdefault("channels", []).append(channel)
    return pb_grpc.InferenceStub(channel)


def ask(s: pb_grpc.InferenceStub) -> list[pb.GenerateResponse]:
    req = pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="Hi")], max_tokens=2, temperature=0)
    return list(s.Generate(req, timeout=60))


CALLS: dict[str, Callable[[pb_grpc.InferenceStub], Any]] = {
    "Generate": ask,
    "Embed": lambda s: s.Embed(pb.EmbedRequest(texts=["pump"]), timeout=30),
    "GetNodeInfo": lambda s: s.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10),
    "Ingest": lambda s: s.Ingest(pb.IngestRequest(collection="notes", documents=[DOC]), timeout=60),
    "DeleteDocuments": lambda s: s.DeleteDocuments(
        pb.DeleteDocumentsRequest(collection="notes", ids=["note-1"]), timeout=30
    ),
    "ListCollections": lambda s: s.ListCollections(pb.ListCollectionsRequest(), timeout=10),
    "Retrieve": lambda s: s.Retrieve(pb.RetrieveRequest(query="strainer", collection="notes"), timeout=30),
}


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def assert_denied(error: grpc.RpcError, *words: str) -> None:
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert sent_code(error) is ErrorCode.PERMISSION_DENIED
    for w in words:
        assert w in (error.details() or ""), error.details()


def test_every_inference_method_needs_a_grant() -> None:
    service = pb.DESCRIPTOR.services_by_name["Inference"]
    assert {method_name(m) for m in METHOD_PERMISSION} == {m.name for m in service.methods} == set(CALLS)


@pytest.mark.parametrize("method", sorted(CALLS))
def test_a_sensor_may_call_no_inference_method(site: dict[str, Any], method: str) -> None:
    error = refused(lambda: CALLS[method](stub(site, "probe1")))
    assert_denied(error, "sensor 'probe1'", f"call {method} on node {NODE}", "no such grant")


def test_a_node_may_not_change_another_nodes_knowledge(site: dict[str, Any]) -> None:
    error = refused(lambda: CALLS["Ingest"](stub(site, OTHER_NODE)))
    assert_denied(error, f"node '{OTHER_NODE}'", f"call Ingest on node {NODE}")
    assert_denied(refused(lambda: CALLS["GetNodeInfo"](stub(site, OTHER_NODE))), f"node '{OTHER_NODE}'")


def test_a_viewer_reads_but_may_not_change_knowledge(site: dict[str, Any]) -> None:
    vera = stub(site, "vera")
    assert CALLS["GetNodeInfo"](vera).node_id == NODE
    assert CALLS["ListCollections"](vera) is not None
    for method in ("Ingest", "DeleteDocuments"):
        error = refused(lambda m=method: CALLS[m](vera))  # type: ignore[misc]
        assert_denied(error, "operator 'vera' (role viewer)", f"call {method}", "needs role operator")


def test_an_operator_and_the_orchestrator_can_change_knowledge(site: dict[str, Any]) -> None:
    olivia = stub(site, "olivia")
    assert CALLS["Ingest"](olivia).documents == 1
    hits = CALLS["Retrieve"](stub(site, "vera")).chunks
    assert [h.doc_id for h in hits] == ["note-1"]
    assert CALLS["DeleteDocuments"](stub(site, "orchestrator")).deleted == 1
    assert CALLS["Ingest"](stub(site, "orchestrator")).documents == 1
    assert len(ask(olivia)) >= 1  # an operator may ask the model


def test_a_collection_pushed_as_a_signed_bundle_is_read_only_to_everyone(site: dict[str, Any], tmp_path: Path) -> None:
    docs = tmp_path / "manuals"
    docs.mkdir()
    (docs / "strainer.md").write_text("# Strainer\n\nClean the strainer of pump 3 every week.\n")
    env = {**os.environ, **read_env(site["pki"].bundle_dir("olivia") / "edgefleet.env")}
    push = [str(BIN / "edgefleet"), "--timeout", "10", "fleet", "push-knowledge", str(docs)]
    r = subprocess.run(
        [*push, "--collection", "manuals", "--version", "3", "--target", "line", "--wait", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr + site["node"].log()[-3000:]
    listed = {c.name: c.version for c in CALLS["ListCollections"](stub(site, "vera")).collections}
    assert listed.get("manuals") == "3"
    words = ("collection manuals was installed from a signed knowledge bundle (version 3)", "pushing a new bundle")
    for who in ("olivia", "orchestrator"):
        ingest = pb.IngestRequest(collection="manuals", documents=[DOC])
        assert_denied(refused(lambda w=who, i=ingest: stub(site, w).Ingest(i, timeout=30)), *words)  # type: ignore[misc]
        delete = pb.DeleteDocumentsRequest(collection="manuals", ids=["strainer.md"])
        assert_denied(refused(lambda w=who, d=delete: stub(site, w).DeleteDocuments(d, timeout=30)), *words)  # type: ignore[misc]
    hits = stub(site, "vera").Retrieve(pb.RetrieveRequest(query="strainer", collection="manuals"), timeout=30)
    assert [h.doc_id for h in hits.chunks] == ["strainer.md"]


def node_info_code(s: pb_grpc.InferenceStub) -> ErrorCode | None:
    try:
        CALLS["GetNodeInfo"](s)
        return None
    except grpc.RpcError as e:
        return sent_code(e)


def test_a_revoked_operator_is_refused_within_seconds(site: dict[str, Any]) -> None:
    rex = stub(site, "rex")
    assert node_info_code(rex) is None
    site["pki"].revoke("rex")  # rewrites crl.pem; the orchestrator publishes it, the node applies it
    revoked_at = time.monotonic()
    deadline = revoked_at + 5
    code = node_info_code(rex)
    while code is None and time.monotonic() < deadline:
        code = node_info_code(rex)
    assert code is ErrorCode.UNAUTHENTICATED, f"still served {time.monotonic() - revoked_at:.1f}s after revoke"
    error = refused(lambda: CALLS["GetNodeInfo"](rex))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "rex was revoked" in (error.details() or "")
    assert node_info_code(stub(site, "olivia")) is None  # everyone else is still served
    assert site["crl"].read_bytes() == site["pki"].crl_path.read_bytes()


def test_a_crl_of_another_ca_or_an_older_one_is_ignored(site: dict[str, Any], tmp_path: Path) -> None:
    node: NodeProcess = site["node"]
    site["pki"].revoke("rhea")  # its own identity: the revocation test may run before or after this one
    assert wait_for(lambda: node_info_code(stub(site, "rhea")) is ErrorCode.UNAUTHENTICATED, 10)
    held = site["crl"].read_bytes()
    other = SitePki(tmp_path / "other")
    other.init("lab", [])  # a CA of the same name: only the signature tells them apart
    forged = other.write_crl().read_bytes()
    # the orchestrator's identity may publish there (the broker's ACL lets only it write the topic)
    publisher = Client(site["broker"], site["pki"].bundle_dir("orchestrator"), "crl-test")
    try:
        assert publisher.connected
        refusals = node.log().count("CRL refused")
        assert not publisher.publish(T.crl(), forged, retain=True).is_failure
        assert wait_for(lambda: node.log().count("CRL refused") > refusals, 10), node.log()[-3000:]
        assert "does not verify with the site CA" in node.log()
        refusals = node.log().count("CRL refused")
        assert not publisher.publish(T.crl(), site["first_crl"], retain=True).is_failure  # the site's, older
        assert wait_for(lambda: node.log().count("CRL refused") > refusals, 10), node.log()[-3000:]
        older = re.search(r"before the one this node holds|lacks \d+ of its revoked serials", node.log())
        assert older, node.log()[-3000:]
        assert not publisher.publish(T.crl(), b"not a CRL", retain=True).is_failure
        assert wait_for(lambda: node.log().count("CRL refused") > refusals + 1, 10), node.log()[-3000:]
    finally:
        publisher.close()
    assert site["crl"].read_bytes() == held
    assert node_info_code(stub(site, "rhea")) is ErrorCode.UNAUTHENTICATED  # still revoked
    assert node_info_code(stub(site, "olivia")) is None
