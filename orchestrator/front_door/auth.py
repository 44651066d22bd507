"""Who may call the front door, and within which limits (EDGEFLEET_FRONT_DOOR_AUTH=keys).

A caller shows a site certificate (HTTPS always asks for one; gRPC with
EDGEFLEET_FRONT_DOOR_CLIENT_CERTS) or an API key (`authorization: Bearer <key>`):

- A certificate must be granted the route's permission (`FRONT_DOOR_GRANTS`, `METHOD_PERMISSION`,
  `HTTP_ROUTE_PERMISSION` in proto/access.py): operators (any role, viewers included) and the
  orchestrator are clients; sensors, nodes and certificates naming no kind are refused
  (PERMISSION_DENIED), even with a valid key beside them: a stolen sensor certificate is no client.
  A certificate in the site's CRL (reread when it changes) is refused (UNAUTHENTICATED).
- A client certificate is limited like a key: by the key bound to its name (`keys create
  --identity`; revoked or expired: refused), else by a valid key sent beside it, else by the
  defaults EDGEFLEET_FRONT_DOOR_IDENTITY_RPM / _TPM (every model and collection).
- An API key must be live and within its rpm/tpm; keys have no METRICS grant.
- Retrieve, and a generation with a collection, need KNOWLEDGE_READ and the collection in the
  caller's allow-list: refused before any node is asked, in the same words whether the collection
  exists or not.

gRPC health and reflection stay open. Refusals carry an ErrorCode, mapped by
proto/error_table.py: UNAUTHENTICATED (401), PERMISSION_DENIED (403), RATE_LIMITED (429 /
RESOURCE_EXHAUSTED with Retry-After). The key's secret is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
from aiohttp import web

from edgefleet.orchestrator.api_keys import ALL_COLLECTIONS, ApiKey, KeyStore, Verdict, Verifier
from edgefleet.orchestrator.front_door.metrics import FrontDoorMetrics
from edgefleet.plumbing.grpc_errors import abort
from edgefleet.plumbing.site_tls import Peer, Revocations, peer_of, peer_of_ssl
from edgefleet.proto.access import (
    FRONT_DOOR_GRANTS,
    METHOD_PERMISSION,
    Kind,
    Permission,
    Principal,
    allowed,
    deny_message,
)
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import row

log = logging.getLogger("edgefleet.orchestrator.front_door.auth")
WHERE = "the front door"
DOING = {
    Permission.GENERATE: "generate",
    Permission.NODE_INFO: "list models",
    Permission.KNOWLEDGE_READ: "read knowledge",
    Permission.KNOWLEDGE_WRITE: "write knowledge",
    Permission.METRICS: "read metrics",
}
GRPC_SERVICE = "/edgefleet.v1.Inference/"
IDENTITY_LIMITS = "EDGEFLEET_FRONT_DOOR_IDENTITY_RPM/TPM"


def identity_limits(who: Principal, rpm: int, tpm: int) -> ApiKey:
    """The default limits of a client certificate that no key is bound to: every model and collection."""
    return ApiKey(
        name=f"{who.kind.value}:{who.name}", key_id=f"{who.kind.value}:{who.name}", secret_hash="", models=(),
        rpm=rpm, tpm=tpm, expires_at=0.0, revoked=False, created_at=0.0, requests=0, tokens=0, last_used=0.0,
        collections=(ALL_COLLECTIONS,), identity=who.name,
    )  # fmt: skip


class FrontDoorAuth:
    """None of it applies when `verifier` is None (auth off)."""

    def __init__(
        self,
        verifier: Verifier | None,
        metrics: FrontDoorMetrics,
        revocations: Revocations | None = None,
        identity_rpm: int = 0,
        identity_tpm: int = 0,
    ) -> None:
        self.verifier, self.metrics = verifier, metrics
        self.revocations = revocations or Revocations(None)
        self.identity_rpm, self.identity_tpm = identity_rpm, identity_tpm

    @classmethod
    def from_settings(
        cls,
        mode: str,
        path: Path,
        metrics: FrontDoorMetrics,
        revocations: Revocations | None = None,
        identity_rpm: int = 0,
        identity_tpm: int = 0,
    ) -> FrontDoorAuth:
        if mode != "keys":
            log.warning(
                "FRONT DOOR AUTHENTICATION IS OFF: anyone who reaches the front door may use it; "
                "set EDGEFLEET_FRONT_DOOR_AUTH=keys and create keys with `edgefleet fleet keys create`"
            )
            return cls(None, metrics)
        store = KeyStore(path)
        log.info(
            "front door requires API keys",
            extra={"api_keys_db": str(path), "identity_rpm": identity_rpm, "identity_tpm": identity_tpm},
        )
        return cls(Verifier(store), metrics, revocations, identity_rpm, identity_tpm)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def identify(self, authorization: str | None, peer: Peer | None, permission: Permission) -> Verdict:
        """Who calls and within which limits, for a route or method needing `permission`: a site
        certificate when one was shown (its kind decides), else an API key (one request counted)."""
        if self.verifier is None:
            return Verdict()
        now = time.time()
        if peer is not None:
            v = self._certificate(self.verifier, peer, authorization, permission, now)
        else:
            v = self._api_key(self.verifier, authorization, permission, now)
        self._count(v)
        if v.allowed and v.key is not None:
            self.metrics.key_requests.labels(v.key.name).inc()
        return v

    @staticmethod
    def _api_key(verifier: Verifier, authorization: str | None, permission: Permission, now: float) -> Verdict:
        v = verifier.lookup(authorization, now)
        if not v.allowed or v.key is None:
            return v
        who = Principal(v.key.name, Kind.API_KEY)
        if not allowed(FRONT_DOOR_GRANTS, who, permission):
            return Verdict(ErrorCode.PERMISSION_DENIED, deny_message(who, DOING[permission], WHERE), v.key, who=who)
        v = verifier.admit(v.key, now)
        v.who = who
        return v

    def _certificate(
        self, verifier: Verifier, peer: Peer, authorization: str | None, permission: Permission, now: float
    ) -> Verdict:
        who = peer.principal
        if self.revocations.revoked(peer.serial):
            return Verdict(ErrorCode.UNAUTHENTICATED, f"the certificate of {who} was revoked", who=who)
        if not allowed(FRONT_DOOR_GRANTS, who, permission):
            why = deny_message(who, DOING[permission], WHERE, FRONT_DOOR_GRANTS, permission)
            return Verdict(ErrorCode.PERMISSION_DENIED, why, who=who)
        key = verifier.bound(who.name)
        if key is not None:
            if key.revoked or key.expired(now):
                state = "revoked" if key.revoked else "expired"
                why = f"{who} may not {DOING[permission]} on {WHERE}: the API key {key.name!r} bound to it is {state}"
                return Verdict(ErrorCode.PERMISSION_DENIED, why, who=who)
            label = f"{who} (bound API key {key.name!r})"
        else:
            sent = verifier.lookup(authorization, now) if authorization else None
            if sent is not None and sent.key is not None and sent.allowed:
                key, label = sent.key, f"the API key {sent.key.name!r}"
            else:
                key = identity_limits(who, self.identity_rpm, self.identity_tpm)
                label = f"{who} (default limits for certificates, {IDENTITY_LIMITS})"
        v = verifier.admit(key, now, label)
        v.who = who
        return v

    def authorize(
        self, caller: Verdict | None, model: str | None, adapter: str = "", collection: str | None = None
    ) -> Verdict:
        """PERMISSION_DENIED when the caller's allow-lists leave out this model/adapter (`model` None:
        not checked) or may not read `collection` (None: the request reads none)."""
        if self.verifier is None or caller is None or caller.key is None:
            return Verdict()
        v = Verdict(key=caller.key, who=caller.who)
        if model is not None:
            v = self.verifier.authorize(caller.key, model, adapter)
        if v.allowed and collection is not None:
            v = self.may_read(caller, collection)
        self._count(v)
        return v

    @staticmethod
    def may_read(caller: Verdict, collection: str) -> Verdict:
        """The collection check: the grant, then the allow-list; the same words for a collection
        that exists and one that does not, so a refusal tells nothing about the site's knowledge."""
        key = caller.key
        assert key is not None
        who = caller.who or Principal(key.name, Kind.API_KEY)
        what = f"read collection {collection!r}"
        if not allowed(FRONT_DOOR_GRANTS, who, Permission.KNOWLEDGE_READ):
            why = deny_message(who, what, WHERE, FRONT_DOOR_GRANTS, Permission.KNOWLEDGE_READ)
            return Verdict(ErrorCode.PERMISSION_DENIED, why, key, who=who)
        if key.reads(collection):
            return Verdict(key=key, who=who)
        whose = "its API key" if who.kind is Kind.API_KEY else f"the API key {key.name!r} bound to it"
        listed = ", ".join(key.collections) or "none"
        why = f"{who} may not {what} on {WHERE}: not among the collections of {whose} (allowed: {listed})"
        return Verdict(ErrorCode.PERMISSION_DENIED, why, key, who=who)

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


async def grpc_check(
    auth: FrontDoorAuth,
    context: grpc.aio.ServicerContext,
    method: str,
    adapter: str = "",
    collection: str | None = None,
) -> ApiKey | None:
    """The limits that apply to the caller of `method` (None when auth is off); aborts the call
    when refused. `collection`: the one the request reads (None: none)."""
    if not auth.enabled:
        return None
    md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    v = auth.identify(md.get("authorization"), peer_of(context), METHOD_PERMISSION[GRPC_SERVICE + method])
    if v.allowed and v.key is not None:
        model = grpc_model(v.key) if v.key.models else None
        if model is not None or collection is not None:
            v = auth.authorize(v, model, adapter, collection)
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
