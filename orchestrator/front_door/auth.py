"""API keys on the front door (EDGEFLEET_FRONT_DOOR_AUTH=keys): `authorization: Bearer <key>` on
every gRPC Inference call and every HTTP /v1/* request, or instead of a key a client certificate
issued by the site CA and not in its CRL (a site identity: operators, services). Health (gRPC Health, reflection) and
/metrics stay open. Refusals carry an ErrorCode, mapped by proto/error_table.py: UNAUTHENTICATED
(401; missing, unknown, revoked, expired key), PERMISSION_DENIED (403; a model or adapter the key
may not use), RATE_LIMITED (429 / RESOURCE_EXHAUSTED with Retry-After; over the key's requests or
tokens per minute). The key's secret is never logged.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from aiohttp import web

from edgefleet.orchestrator.api_keys import ApiKey, KeyStore, Verdict, Verifier
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics
from edgefleet.plumbing.grpc_errors import abort
from edgefleet.plumbing.site_tls import Peer, Revocations, peer_of, peer_of_ssl
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import row

log = logging.getLogger("edgefleet.orchestrator.front_door.auth")


class FrontDoorAuth:
    """None of it applies when `verifier` is None (auth off)."""

    def __init__(
        self, verifier: Verifier | None, metrics: FrontDoorMetrics, revocations: Revocations | None = None
    ) -> None:
        self.verifier, self.metrics = verifier, metrics
        self.revocations = revocations or Revocations(None)

    def certified(self, peer: Peer | None) -> bool:
        """A verified site certificate that is not revoked stands in for an API key."""
        if peer is None:
            return False
        if self.revocations.revoked(peer.serial):
            self.metrics.auth_refused.labels(str(row(ErrorCode.UNAUTHENTICATED).http)).inc()
            log.info(
                "front door request refused",
                extra={"code": ErrorCode.UNAUTHENTICATED.value, "reason": f"{peer.name}: certificate revoked"},
            )
            return False
        return True

    @classmethod
    def from_settings(
        cls, mode: str, path: Path, metrics: FrontDoorMetrics, revocations: Revocations | None = None
    ) -> FrontDoorAuth:
        if mode != "keys":
            log.warning(
                "FRONT DOOR AUTHENTICATION IS OFF: anyone who reaches the front door may use it; "
                "set EDGEFLEET_FRONT_DOOR_AUTH=keys and create keys with `edgefleet fleet keys create`"
            )
            return cls(None, metrics)
        store = KeyStore(path)
        log.info("front door requires API keys", extra={"api_keys_db": str(path)})
        return cls(Verifier(store), metrics, revocations)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def authenticate(self, authorization: str | None) -> Verdict:
        if self.verifier is None:
            return Verdict()
        v = self.verifier.authenticate(authorization)
        self._count(v)
        if v.allowed and v.key is not None:
            self.metrics.key_requests.labels(v.key.name).inc()
        return v

    def identify(self, authorization: str | None, peer: Peer | None) -> Verdict:
        """Who calls: a site certificate (not revoked) is enough; an API key sent beside it is used
        for its limits and usage when it is valid (OpenAI clients always send one). Without a
        certificate the key decides."""
        if self.verifier is None:
            return Verdict()
        if self.certified(peer):
            if authorization:
                v = self.verifier.authenticate(authorization)
                if v.allowed and v.key is not None:
                    self.metrics.key_requests.labels(v.key.name).inc()
                    return v
            return Verdict()
        return self.authenticate(authorization)

    def authorize(self, key: ApiKey | None, model: str, adapter: str = "") -> Verdict:
        if self.verifier is None or key is None:
            return Verdict()
        v = self.verifier.authorize(key, model, adapter)
        self._count(v)
        return v

    def add_tokens(self, key: ApiKey | None, tokens: int) -> None:
        if self.verifier is None or key is None or tokens <= 0:
            return
        self.verifier.add_tokens(key, tokens)
        self.metrics.key_tokens.labels(key.name).inc(tokens)

    def _count(self, v: Verdict) -> None:
        if v.refused is not None:
            self.metrics.auth_refused.labels(str(row(v.refused).http)).inc()
            log.info("front door request refused", extra={"code": v.refused.value, "reason": v.message})

    async def flush_forever(self, interval_s: float = 0.5) -> None:
        """Write the usage counters to the keys file (what `edgefleet fleet keys list` shows)."""
        while self.verifier is not None:
            await asyncio.sleep(interval_s)
            try:
                self.verifier.flush()
            except Exception as e:
                log.warning("API key usage not written", extra={"reason": str(e)})

    def close(self) -> None:
        if self.verifier is not None:
            self.verifier.flush()
            self.verifier.store.close()


async def grpc_check(auth: FrontDoorAuth, context: grpc.aio.ServicerContext, adapter: str = "") -> ApiKey | None:
    """The caller's key (None when auth is off); aborts the call when refused."""
    if not auth.enabled:
        return None
    md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    v = auth.identify(md.get("authorization"), peer_of(context))
    if v.allowed and v.key is not None and v.key.models:
        v = auth.authorize(v.key, grpc_model(v.key), adapter)
    if v.refused is not None:
        await abort(context, v.refused, v.message, (("retry-after", str(v.retry_after_s)),) if v.retry_after_s else ())
    return v.key


def grpc_model(key: ApiKey | None) -> str:
    """gRPC requests name no model: a key with an allow-list sends them to its first allowed model."""
    if key is None or not key.models:
        return ""
    return key.models[0].split(":", 1)[0]


def http_peer(request: web.Request) -> Peer | None:
    """The verified client certificate of an HTTPS request, or None."""
    transport = request.transport
    return peer_of_ssl(transport.get_extra_info("ssl_object") if transport is not None else None)
