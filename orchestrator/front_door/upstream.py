"""Connections to the nodes: one grpc.aio channel per advertised address, and the serving probe.

In secure mode the front door checks, before the first call over a channel, that the node shows
the certificate of the id it announced: a TLS connection of its own to the address (the site CA,
the node id as the expected name), and the certificate it shows must be a NODE certificate of
that name. The handshake alone admits any certificate with server usage and the name as DNS name,
and a console's OPERATOR certificate issued with hosts has both: announced as the node of its own
name, it would receive callers' prompts (tests/security/test_node_claims.py). The verdict is kept
for the life of the channel; a refused node gets no call (UNAVAILABLE: the dispatcher fails over).

The probe asks each online node what it serves that reported state does not list (adapters loaded
at start, collections ingested over gRPC) and hands it to the fleet view; a node that does not
answer keeps what it said before (the router learns of failures from real requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import NoReturn

import grpc

from edgefleet.orchestrator.fleet_view import FleetView, NodeSnapshot
from edgefleet.plumbing.site_tls import Peer, channel_credentials, client_ssl_context, peer_of_ssl, target_name
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.access import Kind
from edgefleet.proto.error_codes import ErrorCode
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
VERIFY_TIMEOUT_S = 5.0  # the certificate check's TLS connection: connect and handshake
REFUSAL_HOLD_S = 30.0  # a node refused for its certificate is checked again after this long


class NodeRefused(Exception):
    """A node that gets no call: its certificate is not the node's it announced (`reason`
    "certificate"), or its address could not be reached to check it ("unreachable")."""

    def __init__(self, code: ErrorCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


@dataclass
class _Channel:
    channel: grpc.aio.Channel
    stub: pb_grpc.InferenceStub
    verified: bool = False
    check: asyncio.Future[None] | None = field(default=None, repr=False)
    refused: NodeRefused | None = None  # the last certificate refusal, kept until `refused_until`
    refused_until: float = 0.0


class NodeChannels:
    """One channel per (address, node id). With `tls` (secure mode) each is mutual TLS with the
    orchestrator's certificate, the node's certificate checked against the id it announced; and
    `verified_stub` first checks that certificate's kind and name itself (see the module's doc):
    an address taken over by another machine, or a sensor's or operator's certificate announced as
    a node (tests/security/test_node_claims.py), gets no request."""

    def __init__(
        self, tls: TlsFiles | None = None, verify_timeout_s: float = VERIFY_TIMEOUT_S, hold_s: float = REFUSAL_HOLD_S
    ) -> None:
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._credentials = channel_credentials(tls) if tls is not None else None
        self._ssl = client_ssl_context(tls) if tls is not None else None
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["h2"])  # a gRPC server refuses a TLS client without it
        self.verify_timeout_s, self.hold_s = verify_timeout_s, hold_s

    def _entry(self, address: str, node_id: str) -> _Channel:
        have = self._channels.get((address, node_id))
        if have is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(address, self._credentials, options=_OPTIONS + target_name(node_id))
            else:
                channel = grpc.aio.insecure_channel(address, options=_OPTIONS)
            have = _Channel(channel, pb_grpc.InferenceStub(channel), verified=self._ssl is None)
            self._channels[(address, node_id)] = have
        return have

    def stub(self, address: str, node_id: str) -> pb_grpc.InferenceStub:
        """The channel's stub, without the certificate check: for calls that send nothing a node
        should not see. Requests go through `verified_stub`."""
        return self._entry(address, node_id).stub

    async def verified_stub(self, address: str, node_id: str) -> pb_grpc.InferenceStub:
        """The stub once the node at `address` showed `node_id`'s node certificate (checked on the
        channel's first use; concurrent first uses share one check; a refusal for the certificate
        holds for `hold_s`, one for an unreachable address is not kept). Raises NodeRefused."""
        entry = self._entry(address, node_id)
        while not entry.verified:
            if entry.refused is not None and time.monotonic() < entry.refused_until:
                raise NodeRefused(entry.refused.code, entry.refused.message, entry.refused.reason)
            if entry.check is None:
                entry.check = asyncio.ensure_future(self._verify(entry, address, node_id))
            check = entry.check
            try:
                await asyncio.shield(check)
            except NodeRefused as e:
                if e.reason == "certificate":
                    entry.refused, entry.refused_until = e, time.monotonic() + self.hold_s
                raise
            finally:
                if check.done() and entry.check is check:
                    entry.check = None
            if self._channels.get((address, node_id)) is not entry:
                entry = self._entry(address, node_id)  # closed meanwhile: a new channel, a new check
        return entry.stub

    async def _verify(self, entry: _Channel, address: str, node_id: str) -> None:
        assert self._ssl is not None
        host, _, port = address.rpartition(":")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.verify_timeout_s):
                _, writer = await asyncio.open_connection(
                    host.strip("[]"), int(port), ssl=self._ssl, server_hostname=node_id
                )
        except ssl.SSLCertVerificationError as e:
            shows = await self._shown(host.strip("[]"), int(port))
            self._refuse(node_id, address, f"its certificate does not verify ({e.verify_message})", shows, False)
        except (OSError, TimeoutError, ValueError) as e:  # down, or not listening yet: gRPC would fail too
            log.debug("cannot reach the node to check its certificate", extra={"node": node_id, "address": address})
            raise NodeRefused(
                ErrorCode.UNAVAILABLE, f"node {node_id} at {address} is unreachable: {e!r}", "unreachable"
            ) from None
        try:
            peer = peer_of_ssl(writer.get_extra_info("ssl_object"))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
        if peer is None or peer.principal.kind is not Kind.NODE:
            self._refuse(node_id, address, "its certificate is not a node's", peer, True)
        if peer.name != node_id:  # a node certificate carrying the id as an extra host name
            self._refuse(node_id, address, "its certificate is another node's", peer, True)
        entry.verified = True
        log.info(
            "node certificate checked",
            extra={"node": node_id, "address": address, "ms": round((time.perf_counter() - started) * 1000, 2)},
        )

    async def _shown(self, host: str, port: int) -> Peer | None:
        """What a server whose certificate failed verification shows (unverified: for the log only)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.verify_timeout_s):
                _, writer = await asyncio.open_connection(host, port, ssl=ctx)
            try:
                return peer_of_ssl(writer.get_extra_info("ssl_object"))
            finally:
                writer.close()
        return None

    @staticmethod
    def _refuse(node_id: str, address: str, why: str, shows: Peer | None, verified: bool) -> NoReturn:
        """Log and raise the refusal; `shows`: the certificate it showed (`verified` by the site CA or not)."""
        kind = shows.principal.kind.value if shows is not None else "none"
        name = shows.name if shows is not None else ""
        log.warning(
            "node refused: it does not show the certificate of the node it announced",
            extra={
                "node": node_id,
                "address": address,
                "cert_kind": kind,
                "cert_name": name,
                "cert_verified": verified,
                "why": why,
            },
        )
        message = f"node {node_id} at {address} refused: {why} (it shows {kind} {name!r})"
        raise NodeRefused(ErrorCode.UNAVAILABLE, message, "certificate")

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for entry in channels.values():
            if entry.check is not None:
                entry.check.cancel()
            with contextlib.suppress(Exception):
                await entry.channel.close(grace=None)


async def probe_node(channels: NodeChannels, view: FleetView, node: NodeSnapshot, timeout: float = 2.0) -> None:
    try:  # the probe checks the certificate too: what an impostor says it serves is not taken
        stub = await channels.verified_stub(node.address, node.node_id)
    except NodeRefused as e:
        log.debug("probe refused", extra={"node": node.node_id, "reason": e.reason})
        return
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
