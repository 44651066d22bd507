"""Routing does not trust what a node says about itself. A real Mosquitto without the ACL (anyone
with a site certificate may publish anything), a real orchestrator with its front door, a real node.

- An attacker holding a SENSOR certificate serves gRPC with it (a real grpc server: it is the
  attacker, not a stand-in for a node) and announces itself, retained, as the node named like its
  certificate, with the real node's model and hash and 64 free slots: the front door picks it, its
  TLS handshake fails (a sensor certificate has no server usage), and every request is answered by
  the real node; the impostor never receives a call. The same server with a NODE certificate does
  receive the call routed to it, so the refusal is the certificate's, nothing else.
- An OPERATOR certificate issued with hosts (a console's: server usage, its own name as DNS name)
  passes a TLS handshake for its own name; announced as the node of that name, the front door
  checks the certificate it shows before the first call and finds an operator, not a node: no call
  (not even the serving probe) reaches it, the requests go to the real node, and the refusal is
  logged naming the node, its address and what its certificate is.
- The check itself (NodeChannels, in process, against the same real servers): concurrent first
  uses of a channel share one check, later uses none; a refusal is kept for a while, then checked again.
- A node announcing more slots than its firmware profile allows is granted the profile's slots.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.orchestrator.api_keys import KeyStore
from edgefleet.orchestrator.front_door.upstream import NodeChannels, NodeRefused
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import row
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, Telemetry
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity
from tests.conftest import NodeProcess, collect, free_port, wait_for
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, node_env
from tests.orchestrator.front_door.conftest import Site

T = Topics.for_site("lab")
REAL = "nc-real"
NODE_KEY = "x-edgefleet-node"


class Impostor:
    """A real gRPC server (the Inference service, every method unimplemented) showing the certificate
    of `bundle`; it records every call that gets past the TLS handshake."""

    def __init__(self, bundle: Path) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[_Recorder(self._record)])
        pb_grpc.add_InferenceServicer_to_server(pb_grpc.InferenceServicer(), self.server)
        creds = grpc.ssl_server_credentials(
            [((bundle / "client.key").read_bytes(), (bundle / "client.crt").read_bytes())],
            root_certificates=(bundle / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port(f"127.0.0.1:{free_port()}", creds)
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def _record(self, method: str) -> None:
        with self._lock:
            self.calls.append(method)

    def generate_calls(self) -> list[str]:
        with self._lock:
            return [c for c in self.calls if c.endswith("/Generate")]

    def stop(self) -> None:
        self.server.stop(grace=None)


class _Recorder(grpc.ServerInterceptor):
    def __init__(self, record: Callable[[str], None]) -> None:
        self.record = record

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.record(details.method)
        return continuation(details)


def announce(watch: Watcher, node_id: str, info: NodeInfoPayload, slots: int) -> None:
    """A retained `online` status and a telemetry message for `node_id`, as anyone on the broker can publish."""
    watch.publish(T.node_status(node_id), NodeStatus(node_id=node_id, state="online", info=info).dumps(), retain=True)
    t = Telemetry(
        node_id=node_id,
        queue_depth=0,
        slots_busy=0,
        slots_total=slots,
        slots_available=slots,
        tokens_per_second=0.0,
        temperature_c=None,
        throttled=False,
        shedding=False,
        rss_bytes=0,
    )
    watch.publish(T.node_telemetry(node_id), t.dumps())


def withdraw(watch: Watcher, node_id: str) -> None:
    watch.publish(T.node_status(node_id), NodeStatus(node_id=node_id, state="offline", reason="gone").dumps(), True)


def metric(site: Site, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(site.metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("node-claims")
    broker = Mosquitto(tmp)  # TLS, client certificates, no ACL
    grpc_port, http_port = free_port(), free_port()
    env = {
        "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{grpc_port}",
        "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{http_port}",
        "EDGEFLEET_ROUTE_PROBE_INTERVAL_S": "0.5",
        "EDGEFLEET_ROUTE_FIRST_TOKEN_TIMEOUT_S": "20",
        "EDGEFLEET_ROUTE_AFFINITY": "false",
    }
    store = KeyStore(tmp / "api-keys.db")
    api_key = store.create("harness")[1]
    store.close()
    orch = Orchestrator(tmp, broker, env=env)
    s = Site(broker, orch, {}, f"127.0.0.1:{grpc_port}", f"https://127.0.0.1:{http_port}", tmp, api_key)
    try:
        s.nodes[REAL] = NodeProcess(tmp, env=node_env(broker), node_id=REAL)
        s.nodes[REAL].wait_serving()
        s.wait_routable(REAL)
        yield s
    finally:
        s.channel.close()
        for n in s.nodes.values():
            n.stop()
        orch.stop()
        broker.stop()


@pytest.fixture
def watch(site: Site) -> Iterator[Watcher]:
    w = Watcher(site.broker, T.node_status(REAL))
    yield w
    w.close()


def real_info(watch: Watcher) -> NodeInfoPayload:
    assert wait_for(lambda: any(p.get("info") for p in watch.on(T.node_status(REAL))), 10)
    info = NodeStatus.model_validate(next(p for p in watch.on(T.node_status(REAL)) if p.get("info"))).info
    assert info is not None and info.model.sha256
    return info


def test_a_sensor_certificate_announced_as_a_node_never_receives_a_request(site: Site, watch: Watcher) -> None:
    pki = site_identity.site().pki
    sensor = "aa-sensor-imp"  # sorts before the real node: with both idle, the router's first pick
    pki.issue(sensor, "sensor")
    impostor = Impostor(pki.bundle_dir(sensor))
    control_name = "ab-node-control"  # the same server with a node certificate: calls do reach it
    pki.issue(control_name, "node")
    control = Impostor(pki.bundle_dir(control_name))
    real = real_info(watch)
    try:
        # the real node's model and hash (public), 64 free slots, on the impostor's address
        announce(watch, sensor, real.model_copy(update={"grpc_address": impostor.address}), 64)
        site.wait_routable(sensor, REAL)
        for i in range(3):
            req = pb.GenerateRequest(prompt=f"Item {i}:", max_tokens=3, temperature=0)
            call = site.stub.Generate(req, metadata=(("x-request-id", f"impostor-{i}"),), timeout=60)
            collect(call)
            assert dict(call.initial_metadata())[NODE_KEY] == REAL
        tried = metric(site, "edgefleet_front_door_failovers_total", node=sensor)
        lines = [ln for ln in site.orchestrator_log().splitlines() if sensor in ln and "failing over" in ln]
        assert tried is not None and tried >= 1, "the front door picked the impostor and failed over from it"
        assert impostor.calls == [], f"a call got past the handshake: {impostor.calls}\n{lines}"
        cooled = metric(site, "edgefleet_front_door_cooldowns_total", node=sensor)
        assert cooled == 1, "it announces 64 free slots, but its calls keep failing: cooled down"
        pinned = pb.GenerateRequest(prompt="Secret:", max_tokens=3)
        with pytest.raises(grpc.RpcError) as refused:
            collect(site.stub.Generate(pinned, metadata=((NODE_KEY, sensor),), timeout=60))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert impostor.calls == []

        announce(watch, control_name, real.model_copy(update={"grpc_address": control.address}), 4)
        site.wait_routable(control_name)
        with pytest.raises(grpc.RpcError):  # it implements nothing: the call reaches it and fails there
            collect(site.stub.Generate(pinned, metadata=((NODE_KEY, control_name),), timeout=60))
        assert control.generate_calls(), "the same server with a node certificate gets the request"
    finally:
        withdraw(watch, sensor)
        withdraw(watch, control_name)
        impostor.stop()
        control.stop()


def test_an_operator_certificate_with_server_usage_announced_as_a_node_never_receives_a_request(
    site: Site, watch: Watcher
) -> None:
    pki = site_identity.site().pki
    console = "ac-console-imp"  # sorts before the real node: with both idle, the router's first pick
    pki.issue(console, "operator", hosts=["127.0.0.1"])  # a console's certificate: server usage
    impostor = Impostor(pki.bundle_dir(console))
    real = real_info(watch)
    try:
        announce(watch, console, real.model_copy(update={"grpc_address": impostor.address}), 64)
        site.wait_routable(console, REAL)
        for i in range(3):
            req = pb.GenerateRequest(prompt=f"Item {i}:", max_tokens=3, temperature=0)
            call = site.stub.Generate(req, metadata=(("x-request-id", f"console-imp-{i}"),), timeout=60)
            collect(call)
            assert dict(call.initial_metadata())[NODE_KEY] == REAL
        tried = metric(site, "edgefleet_front_door_failovers_total", node=console)
        assert tried is not None and tried >= 1, "the front door picked the impostor and failed over from it"
        assert impostor.calls == [], f"a call got past the certificate check: {impostor.calls}"
        assert metric(site, "edgefleet_front_door_cooldowns_total", node=console) == 1
        pinned = pb.GenerateRequest(prompt="Secret:", max_tokens=3)
        with pytest.raises(grpc.RpcError) as refused:
            collect(site.stub.Generate(pinned, metadata=((NODE_KEY, console),), timeout=60))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert impostor.calls == []
        warned = [
            ln
            for ln in site.orchestrator_log().splitlines()
            if " W " in ln and "certificate" in ln and f"node={console}" in ln
        ]
        assert warned, site.orchestrator_log()[-3000:]
        assert f"address={impostor.address}" in warned[0] and "cert_kind=operator" in warned[0], warned[0]
        assert f"cert_name={console}" in warned[0], warned[0]
    finally:
        withdraw(watch, console)
        impostor.stop()


def test_the_certificate_check_runs_once_per_channel_and_a_refusal_is_checked_again_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki = site_identity.site().pki
    pki.issue("ad-node-once", "node", hosts=["127.0.0.1"])
    pki.issue("ae-console-once", "operator", hosts=["127.0.0.1"])
    node, console = Impostor(pki.bundle_dir("ad-node-once")), Impostor(pki.bundle_dir("ae-console-once"))
    orch = pki.bundle_dir("orchestrator")
    tls = TlsFiles(orch / "client.crt", orch / "client.key", orch / "ca.crt")

    def checks(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.endswith("front_door.upstream") and r.levelno == level]

    async def scenario() -> None:
        channels = NodeChannels(tls, hold_s=0.3)
        try:
            stubs = await asyncio.gather(*(channels.verified_stub(node.address, "ad-node-once") for _ in range(8)))
            assert len({id(s) for s in stubs}) == 1
            await channels.verified_stub(node.address, "ad-node-once")
            assert len(checks(logging.INFO)) == 1, "eight concurrent first uses, then one more: one check"

            refusals = await asyncio.gather(
                *(channels.verified_stub(console.address, "ae-console-once") for _ in range(4)), return_exceptions=True
            )
            assert all(isinstance(r, NodeRefused) for r in refusals), refusals
            first = refusals[0]
            assert isinstance(first, NodeRefused) and first.code == ErrorCode.UNAVAILABLE and row(first.code).failover
            with pytest.raises(NodeRefused):  # kept: not checked again yet
                await channels.verified_stub(console.address, "ae-console-once")
            assert len(checks(logging.WARNING)) == 1
            await asyncio.sleep(0.4)  # the hold is a time span: nothing to wait on but the clock
            with pytest.raises(NodeRefused):
                await channels.verified_stub(console.address, "ae-console-once")
            assert len(checks(logging.WARNING)) == 2, "checked again once the hold ran out"
        finally:
            await channels.close()

    caplog.set_level(logging.INFO, logger="edgefleet.orchestrator.front_door.upstream")
    try:
        asyncio.run(scenario())
    finally:
        node.stop()
        console.stop()
    assert node.calls == [] and console.calls == [], "the check itself makes no gRPC call"


def node_slots(site: Site, node_id: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(site.metrics()):
        for s in family.samples:
            if s.name == "edgefleet_front_door_node_slots" and s.labels.get("node") == node_id:
                out[s.labels["figure"]] = float(s.value)
    return out


def test_a_node_announcing_more_slots_than_its_profile_allows_is_capped(site: Site, watch: Watcher) -> None:
    inflated = "zz-inflated"
    info = NodeInfoPayload(profile="rpi4-4gb", groups=["rpi4-4gb"], model=ModelRef(name="zz-model"))  # no address
    try:
        announce(watch, inflated, info, 64)
        assert wait_for(lambda: node_slots(site, inflated) == {"claimed": 64.0, "granted": 2.0}, 10), node_slots(
            site, inflated
        )
        assert node_slots(site, REAL) == {"claimed": 4.0, "granted": 4.0}, "an honest x86-dev claim stands"
        announce(watch, inflated, info, 32)  # claims again: capped again, logged once per node
        assert wait_for(lambda: node_slots(site, inflated) == {"claimed": 32.0, "granted": 2.0}, 10)
        warned = [
            ln
            for ln in site.orchestrator_log().splitlines()
            if "more slots than its profile allows" in ln and f"node={inflated}" in ln
        ]
        assert len(warned) == 1 and "claimed_slots=64" in warned[0] and "cap=2" in warned[0], warned
    finally:
        withdraw(watch, inflated)
