"""How the bench's processes and clients prove who they are: secure by default, as the product is.

Secure: a site PKI made for the run (tests/site_identity.py: the same `fleet init-pki` / `enroll-*`
code an operator runs) in a temporary folder removed by `close()`. Each node gets its own node
certificate (mutual TLS on its gRPC API), the orchestrator its bundle, and the bench's own clients
show the `harness` operator certificate, checking a node's name where they know it.
`--insecure`: plaintext everywhere (EDGEFLEET_INSECURE=1), to compare.

One instance per run; the benchmarks (run_bench.py, front_door.py) start their processes with its
environments and open their gRPC channels and HTTPS contexts through it.
"""

from __future__ import annotations

import argparse
import ssl
from typing import Any

import grpc

from tests import site_identity  # the bench runs from the repository root (bench.* on sys.path)
from tests.site_identity import INSECURE_ENV

INSECURE_HELP = (
    "plaintext gRPC, HTTP and MQTT, EDGEFLEET_INSECURE=1 (default: TLS with site certificates made for the run)"
)


def add_insecure_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure", action="store_true", help=INSECURE_HELP)


class BenchSecurity:
    def __init__(self, insecure: bool) -> None:
        self.insecure = insecure
        if not insecure:
            site_identity.site()  # made now, so a broken PKI fails the run before any process starts

    @property
    def mode(self) -> str:
        return "insecure (plaintext, EDGEFLEET_INSECURE=1)" if self.insecure else "secure (TLS, site certificates)"

    @property
    def site(self) -> str:
        return site_identity.SITE

    def env(self) -> dict[str, str]:
        """For every process of the run that has no identity of its own (the CLI): the insecure switch
        when insecure; when secure the harness identity is already in os.environ (site_identity)."""
        return dict(INSECURE_ENV) if self.insecure else {}

    def node_env(self, node_id: str) -> dict[str, str]:
        """A node's certificate (CN = `node_id`, valid for 127.0.0.1) and the site's public key."""
        return self.env() if self.insecure else site_identity.site().node_env(node_id)

    def orchestrator_env(self) -> dict[str, str]:
        return self.env() if self.insecure else site_identity.site().orchestrator_env()

    def channel(self, address: str, node_id: str | None = None, options: list[Any] | None = None) -> grpc.Channel:
        """To a node (`node_id`: the name its certificate must carry) or the front door: mutual TLS as the
        harness operator, or plaintext when insecure."""
        if self.insecure:
            return grpc.insecure_channel(address, options=options)
        return site_identity.site().grpc_channel(address, node_id, options)

    def ssl_context(self) -> ssl.SSLContext | None:
        """For HTTPS to the site's servers (the harness certificate); None when insecure (plain HTTP)."""
        return None if self.insecure else site_identity.site().ssl_context()

    @property
    def http_scheme(self) -> str:
        return "http" if self.insecure else "https"

    def close(self) -> None:
        """Remove the run's site PKI (a no-op when insecure)."""
        site_identity.remove()

    def __enter__(self) -> BenchSecurity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
