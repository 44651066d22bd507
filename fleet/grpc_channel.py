"""Channels from the CLI and the console to a node or the front door: mutual TLS with the operator's
site certificate in secure mode, plaintext only with EDGEFLEET_INSECURE.

The server's certificate is checked against `name` when one is known (a node id: node certificates
carry it as a DNS name), else against the host in the address (the front door's certificate lists
its hosts)."""

from __future__ import annotations

import grpc
from pydantic import SecretStr

from edgefleet.plumbing.site_tls import channel_credentials, target_name
from edgefleet.plumbing.transport_security import TlsFiles, TransportSecurity


def _options(name: str | None) -> list[tuple[str, object]]:
    return target_name(name) if name else []


def _credentials(tls: TlsFiles, api_key: SecretStr | None) -> grpc.ChannelCredentials:
    creds = channel_credentials(tls)
    if api_key is None:
        return creds
    # `authorization: Bearer <key>` on every call (the front door's gRPC listener takes keys)
    return grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(api_key.get_secret_value()))


def node_channel(
    settings: TransportSecurity, address: str, name: str | None = None, api_key: SecretStr | None = None
) -> grpc.Channel:
    tls = settings.require_tls("talking to a node or the front door over gRPC")
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, _credentials(tls, api_key), options=_options(name))


def node_channel_aio(
    settings: TransportSecurity, address: str, name: str | None = None, api_key: SecretStr | None = None
) -> grpc.aio.Channel:
    tls = settings.require_tls("talking to a node or the front door over gRPC")
    if tls is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, _credentials(tls, api_key), options=_options(name))
