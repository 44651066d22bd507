"""A real node, orchestrator and CLI on the mutual-TLS broker, each with the environment of its
enrollment bundle: the node comes online under its ACL, answers a sensor rule, and the operator's
`fleet status` goes through the orchestrator. Then no log or output holds private key material."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.fleet.identity_commands import read_env
from edgefleet.fleet.site.pki import SitePki
from edgefleet.plumbing.site_tls import target_name
from edgefleet.proto.artifacts import SiteKey
from edgefleet.proto.payloads import DesiredState, Target, TemplateSpec
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.signing import sign_desired
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import BIN, NodeProcess, wait_for
from tests.mqtt_support import Orchestrator
from tests.security.tls_support import Client, TlsBroker

NODE = "tls1"
T = Topics.for_site("lab")


def desired() -> DesiredState:
    return DesiredState(
        site="lab",
        target=Target(kind="group", name="line"),
        generation=1,
        templates={"ask": TemplateSpec(name="ask", version="1", template="Is {{ v }} OK?", variables=["v"])},
        rules={
            "probe": RuleSpec(
                name="probe",
                version="1",
                topic_filter="plant/+/reading",
                template="ask",
                variables={"v": "payload.v"},
                max_tokens=2,
            )
        },
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("tlsnode")
    broker = TlsBroker(tmp)
    started: list[Any] = []
    try:
        node_bundle = broker.enroll("node", NODE, "--groups", "line")
        broker.enroll("sensor", "probe1")
        broker.enroll("operator", "alice")
        broker.settle()
        watch = Client(broker, broker.pki.bundle_dir("orchestrator"), "watcher")
        started.append(watch)
        assert watch.connected
        watch.subscribe(f"{T.root}#")
        signed = sign_desired(desired(), SiteKey.load(broker.pki.dir / "lab.key").private).dumps()
        assert not watch.publish(T.desired_group("line"), signed, retain=True).is_failure
        node_env = {**read_env(node_bundle / "edgefleet.env"), "EDGEFLEET_TELEMETRY_INTERVAL_S": "1"}
        node = NodeProcess(tmp, node_id=NODE, env=node_env)
        started.append(node)
        orch_env = read_env(broker.pki.bundle_dir("orchestrator") / "edgefleet.env")
        orchestrator = Orchestrator(tmp, broker, env=orch_env)  # type: ignore[arg-type]
        started.append(orchestrator)
        node.wait_serving()
        yield {"tmp": tmp, "broker": broker, "node": node, "orch": orchestrator, "watch": watch}
    finally:
        for part in reversed(started):
            if isinstance(part, Client):
                part.close()
            else:
                part.stop()
        broker.stop()


def test_node_comes_online_and_applies_its_group_state(fleet: dict[str, Any]) -> None:
    watch = fleet["watch"]
    assert wait_for(
        lambda: watch.got(T.node_status(NODE)) and b"online" in dict(watch.messages)[T.node_status(NODE)], 20
    )
    assert wait_for(lambda: any(t == T.node_reported(NODE) and b'"group:line":1' in p for t, p in watch.messages), 20)
    assert wait_for(lambda: watch.got(T.node_telemetry(NODE)), 10)
    log = fleet["broker"].log_path.read_text()
    assert f"as node-lab-{NODE} " in log and f"u'{NODE}'" in log  # both connections: CN = user name
    assert f"as node-lab-{NODE}-sensors " in log


def test_sensor_message_is_answered_under_the_acl(fleet: dict[str, Any]) -> None:
    watch = fleet["watch"]
    sensor = Client(fleet["broker"], fleet["broker"].pki.bundle_dir("probe1"), "probe1")
    try:
        assert wait_for(
            lambda: any(t == T.node_reported(NODE) and b'"group:line":1' in p for t, p in watch.messages), 20
        )
        assert not sensor.publish("plant/press1/reading", b'{"v": 42}').is_failure
        assert wait_for(lambda: watch.got(T.results(NODE)), 60), fleet["node"].log()[-3000:]
    finally:
        sensor.close()


def test_operator_cli_status_through_the_orchestrator(fleet: dict[str, Any]) -> None:
    bundle = fleet["broker"].pki.bundle_dir("alice")
    env = {**os.environ, **read_env(bundle / "edgefleet.env")}

    def status() -> str:
        r = subprocess.run(
            [str(BIN / "edgefleet"), "--timeout", "5", "fleet", "status", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        fleet.setdefault("outputs", []).append(r.stdout + r.stderr)
        return r.stdout if r.returncode == 0 else ""

    assert wait_for(lambda: f'"node_id": "{NODE}"' in status(), 30, interval=1), fleet["outputs"][-1]


def test_no_private_key_material_in_any_log_or_output(fleet: dict[str, Any]) -> None:
    tmp: Path = fleet["tmp"]
    broker: TlsBroker = fleet["broker"]
    keys = [broker.pki.ca_key_path, broker.pki.server_key_path, *broker.pki.dir.glob("bundles/*/client.key")]
    bodies = []
    for k in keys:
        assert k.stat().st_mode & 0o777 == 0o600, k
        lines = [line for line in k.read_text().splitlines() if line and not line.startswith("-----")]
        bodies += [line for line in lines if len(line) >= 16]
    assert bodies
    texts = [*broker.outputs, *fleet.get("outputs", [])]
    texts += [p.read_text(errors="replace") for p in tmp.rglob("*.log")]
    assert len(texts) >= 4
    for text in texts:
        for body in bodies:
            assert body not in text
        assert "PRIVATE KEY" not in text


def _creds(bundle: Path, with_cert: bool = True) -> grpc.ChannelCredentials:
    ca = (bundle / "ca.crt").read_bytes()
    if not with_cert:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(ca, (bundle / "client.key").read_bytes(), (bundle / "client.crt").read_bytes())


def _info(channel: grpc.Channel) -> grpc.StatusCode | str:
    try:
        return str(pb_grpc.InferenceStub(channel).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5).node_id)
    except grpc.RpcError as e:
        return e.code()
    finally:
        channel.close()


def test_node_grpc_takes_only_site_identities(fleet: dict[str, Any], tmp_path: Path) -> None:
    """Mutual TLS on the node: a site operator's certificate is served; plaintext, TLS without a
    certificate, a foreign CA's certificate, and a caller expecting another node's name are not."""
    node: NodeProcess = fleet["node"]
    pki = fleet["broker"].pki
    alice = pki.bundle_dir("alice")
    assert _info(grpc.secure_channel(node.address, _creds(alice), options=target_name(NODE))) == NODE
    assert _info(grpc.insecure_channel(node.address)) == grpc.StatusCode.UNAVAILABLE
    no_cert = grpc.secure_channel(node.address, _creds(alice, with_cert=False), options=target_name(NODE))
    assert _info(no_cert) == grpc.StatusCode.UNAVAILABLE
    other = SitePki(tmp_path / "other")
    other.init("lab", [])
    other.issue("mallory", "operator")
    mallory = other.bundle_dir("mallory")
    shown = grpc.ssl_channel_credentials(
        (alice / "ca.crt").read_bytes(),
        (mallory / "client.key").read_bytes(),
        (mallory / "client.crt").read_bytes(),
    )
    assert _info(grpc.secure_channel(node.address, shown, options=target_name(NODE))) == grpc.StatusCode.UNAVAILABLE
    impostor = grpc.secure_channel(node.address, _creds(alice), options=target_name("some-other-node"))
    assert _info(impostor) == grpc.StatusCode.UNAVAILABLE
