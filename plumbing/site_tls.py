"""gRPC and HTTPS over TLS with site certificates: server and channel credentials, SSL contexts,
who the peer is, and refusing peers whose certificate the site revoked.

Nodes serve mutual TLS: a caller must show a certificate issued by the site CA. Callers name the
node they expect (`target_name`): node certificates carry the node id as a DNS name, so a channel
to 10.0.0.7 that is meant for `pump-3` only completes with `pump-3`'s certificate, wherever the node
moved. gRPC's TLS has no CRL hook in Python; `PeerCheckInterceptor` reads the site's crl.pem
(reloaded when it changes) and refuses a revoked certificate on every call.
"""

from __future__ import annotations

import inspect
import logging
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from edgefleet.plumbing.grpc_errors import abort
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.access import Principal, principal_from_ous
from edgefleet.proto.error_codes import ErrorCode

log = logging.getLogger("edgefleet.site_tls")


def server_credentials(files: TlsFiles, require_client_auth: bool) -> grpc.ServerCredentials:
    """TLS with this process's certificate; clients' certificates checked against the site CA
    (required when `require_client_auth`, else optional: an API key may stand in for one)."""
    cert, key, ca = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=require_client_auth)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """TLS to a site server, showing this process's certificate."""
    cert, key, ca = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def target_name(name: str) -> list[tuple[str, Any]]:
    """Channel options to verify the server's certificate against `name` (a node id) not the host."""
    return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


def server_ssl_context(files: TlsFiles, require_client_cert: bool) -> ssl.SSLContext:
    """The HTTPS side of `server_credentials` (aiohttp listeners)."""
    files.read()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_ssl_context(files: TlsFiles | None, ca: Path | None = None) -> ssl.SSLContext:
    """HTTPS to a site server: verify it against the site CA, show this process's certificate if any."""
    ctx = ssl.create_default_context(cafile=str(files.ca if files else ca) if (files or ca) else None)
    if files is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


@dataclass(frozen=True)
class Peer:
    """The verified certificate a caller showed: who (name, kind, role: proto/access.py) and its serial."""

    principal: Principal
    serial: int

    @property
    def name(self) -> str:
        return self.principal.name


_peer_cache: dict[bytes, Peer] = {}


def _peer(raw: bytes, der: bool) -> Peer:
    found = _peer_cache.get(raw)
    if found is None:
        cert = x509.load_der_x509_certificate(raw) if der else x509.load_pem_x509_certificate(raw)
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        ous = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)]
        found = Peer(principal_from_ous(str(cns[0].value) if cns else "", ous), cert.serial_number)
        if len(_peer_cache) > 1024:
            _peer_cache.clear()
        _peer_cache[raw] = found
    return found


def peer_of(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Peer | None:
    """The peer's verified site certificate, or None (plaintext, or TLS without a client certificate)."""
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    return _peer(pem[0], der=False) if pem else None


def peer_of_ssl(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> Peer | None:
    """The same for an HTTPS connection (the transport's `ssl_object`)."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return _peer(der, der=True) if der else None


class Revocations:
    """The serials in one or more CRL files (their union), each reread (at most every `recheck_s`)
    when it changes: its modification time, size or inode, so two writes within one timestamp tick
    are not missed. A node applies both the site's file it was given and the one it receives over MQTT."""

    def __init__(self, crl: Path | Sequence[Path] | None, recheck_s: float = 0.5) -> None:
        paths = [crl] if isinstance(crl, Path) else list(crl or [])
        self.paths = list(dict.fromkeys(paths))
        self.path = self.paths[0] if self.paths else None
        self.recheck_s = recheck_s
        self._per_file: dict[Path, frozenset[int]] = {}
        self._stamps: dict[Path, tuple[int, int, int]] = {}
        self._serials: frozenset[int] = frozenset()
        self._checked = 0.0
        self._lock = threading.Lock()

    def _load(self, path: Path) -> bool:
        """Reload `path` if it changed; True when its serials changed."""
        try:
            st = path.stat()
        except OSError:
            return False  # keep what we had: a CRL being replaced must not let everyone in
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamps.get(path):
            return False
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
        except (OSError, ValueError) as e:
            log.warning("cannot read the CRL; keeping the previous one", extra={"crl": str(path), "error": str(e)})
            return False
        self._per_file[path] = frozenset(r.serial_number for r in crl)
        self._stamps[path] = stamp
        log.info("CRL loaded", extra={"crl": str(path), "revoked": len(self._per_file[path])})
        return True

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self.paths or now - self._checked < self.recheck_s:
            return
        with self._lock:
            self._checked = now
            if any([self._load(p) for p in self.paths]):
                self._serials = frozenset().union(*self._per_file.values())

    def revoked(self, serial: int) -> bool:
        self._refresh()
        return serial in self._serials


Behavior = Callable[..., Any]


Refusal = tuple[ErrorCode, str]
AccessCheck = Callable[[Peer | None, str], Refusal | None]
"""(the caller's certificate, the full gRPC method) → None to let it call, or why not."""


class PeerCheckInterceptor(grpc.aio.ServerInterceptor):
    """Refuses callers whose certificate is in the site's CRL (UNAUTHENTICATED) and, with `access`,
    calls the caller may not make (its refusal's code, PERMISSION_DENIED for a missing grant)."""

    def __init__(self, revocations: Revocations, access: AccessCheck | None = None) -> None:
        self.revocations, self.access = revocations, access

    async def _check(self, context: grpc.aio.ServicerContext, method: str) -> None:
        peer = peer_of(context)
        if peer is not None and self.revocations.revoked(peer.serial):
            await abort(context, ErrorCode.UNAUTHENTICATED, f"the certificate of {peer.name} was revoked")
        if self.access is not None:
            refusal = self.access(peer, method)
            if refusal is not None:
                log.info(
                    "call refused",
                    extra={"method": method, "peer": peer.name if peer else "", "code": refusal[0].value},
                )
                await abort(context, refusal[0], refusal[1])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or (not self.revocations.paths and self.access is None):
            return handler
        method = handler_call_details.method

        async def check(context: grpc.aio.ServicerContext) -> None:
            await self._check(context, method)

        kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(uu, **kw)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            if not inspect.isasyncgenfunction(inner_us):  # writes with context.write (health's Watch)

                async def us_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                    await check(context)
                    await inner_us(request, context)

                return grpc.unary_stream_rpc_method_handler(us_writer, **kw)

            async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(context)
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(us, **kw)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def su(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(su, **kw)
        inner_ss = handler.stream_stream
        if not inspect.isasyncgenfunction(inner_ss):

            async def ss_writer(requests: Any, context: grpc.aio.ServicerContext) -> None:
                await check(context)
                await inner_ss(requests, context)

            return grpc.stream_stream_rpc_method_handler(ss_writer, **kw)

        async def ss(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await check(context)
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(ss, **kw)
