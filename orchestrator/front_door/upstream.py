"""Connections to the nodes: one grpc.aio channel per advertised address, and the serving probe.

The probe asks each online node what it serves that reported state does not list (adapters loaded
at start, collections ingested over gRPC) and hands it to the fleet view; a node that does not
answer keeps what it said before (the router learns of failures from real requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from edgefleet.orchestrator.fleet_view import FleetView, NodeSnapshot
from edgefleet.plumbing.site_tls import channel_credentials, target_name
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("edgefleet.orchestrator.front_door.upstream")
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # a killed node: fail fast and reconnect quickly when it is back
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
]


class NodeChannels:
    """One channel per (address, node id). With `tls` (secure mode) each is mutual TLS with the
    orchestrator's certificate, and the node must show a certificate for the id it announced, with
    server use: an address taken over by another machine, or a sensor's or operator's certificate
    announced as a node (tests/security/test_node_claims.py), fails the handshake and gets no request."""

    def __init__(self, tls: TlsFiles | None = None) -> None:
        self._stubs: dict[tuple[str, str], tuple[grpc.aio.Channel, pb_grpc.InferenceStub]] = {}
        self._credentials = channel_credentials(tls) if tls is not None else None

    def stub(self, address: str, node_id: str) -> pb_grpc.InferenceStub:
        have = self._stubs.get((address, node_id))
        if have is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=_OPTIONS + target_name(node_id))
            else:
                channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            have = (channel, pb_grpc.InferenceStub(channel))
            self._stubs[(address, node_id)] = have
        return have[1]

    async def close(self) -> None:
        stubs, self._stubs = self._stubs, {}
        for channel, _ in stubs.values():
            with contextlib.suppress(Exception):
                await channel.close(grace=None)


async def probe_node(channels: NodeChannels, view: FleetView, node: NodeSnapshot, timeout: float = 2.0) -> None:
    stub = channels.stub(node.address, node.node_id)
    try:
        info = await stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as e:
        log.debug("probe failed", extra={"node": node.node_id, "code": e.code().name})
        return
    names: list[str] = []
    try:  # a node without local knowledge answers an error here: no collections
        collections = await stub.ListCollections(pb.ListCollectionsRequest(), timeout=timeout)
        names = [c.name for c in collections.collections]
    except grpc.aio.AioRpcError as e:
        log.debug("no collections", extra={"node": node.node_id, "code": e.code().name})
    view.apply_probe(node.node_id, [a.name for a in info.adapters], names)


async def probe_forever(channels: NodeChannels, view: FleetView, interval_s: float) -> None:
    """Probe every online node, then again every `interval_s` (a node seen for the first time at once)."""
    probed: dict[str, float] = {}  # node → the `since` of the status it was probed in
    loop = asyncio.get_running_loop()
    last_round = -interval_s
    while True:
        nodes = [n for n in view.snapshot().online() if n.address]
        due_all = loop.time() - last_round >= interval_s
        todo = [n for n in nodes if due_all or probed.get(n.node_id) != n.since]
        if due_all:
            last_round = loop.time()
        if todo:
            await asyncio.gather(*(probe_node(channels, view, n) for n in todo))
            probed.update({n.node_id: n.since for n in todo})
        await asyncio.sleep(min(0.5, interval_s))
