"""The test session's site identity: the suite runs secure, as the product does by default.

One site PKI for the whole session (made with the same `fleet init-pki` / `enroll-*` code an
operator runs): the CA, the broker's certificate, the orchestrator's bundle and its site signing
key, and a `harness` operator whose certificate the tests' own clients (paho, gRPC, HTTPS, the CLI)
show. Each node started by a fixture gets its own node certificate (CN = node id), so its gRPC
server proves who it is and the front door's mutual TLS to it is the real one.

`install()` puts the harness identity into os.environ (EDGEFLEET_MQTT_CA/CERT/KEY_FILE), so every
process a test starts inherits a working identity, as a device inherits its bundle's env file.
"""

from __future__ import annotations

import io
import os
import shutil
import ssl
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai

from edgefleet.fleet import identity_commands
from edgefleet.fleet.identity_commands import read_env
from edgefleet.fleet.site.pki import SitePki
from edgefleet.plumbing.site_tls import channel_credentials, client_ssl_context, target_name
from edgefleet.plumbing.transport_security import TlsFiles
from edgefleet.proto.artifacts import SiteKey
from edgefleet.proto.payloads import DesiredState
from edgefleet.proto.signing import sign_desired

SITE = "lab"
HARNESS = "harness"
INSECURE_ENV = {"EDGEFLEET_INSECURE": "1"}
"""For the few tests that are about insecure mode itself, or talk to something that has no TLS."""


def _cli(pki_dir: Path, *args: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    rc = identity_commands.main(["--site", SITE, args[0], "--dir", str(pki_dir), *args[1:]], out, err)
    if rc != 0:
        raise RuntimeError(f"test PKI: {' '.join(args)} failed: {err.getvalue()}")


class TestSite:
    __test__ = False  # not a pytest class

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = SitePki(root / "pki")
        _cli(self.pki.dir, "init-pki")
        # an admin: the suite's own clients run every command; in-process servers show its certificate
        _cli(self.pki.dir, "enroll-operator", HARNESS, "--role", "admin", "--host", "127.0.0.1")
        self.harness_dir = self.pki.bundle_dir(HARNESS)
        self.site_key = self.pki.dir / f"{SITE}.key"
        self.site_pub = self.pki.dir / f"{SITE}.pub"
        self._lock = threading.Lock()

    # -- environments ------------------------------------------------------------------------
    def identity_env(self, bundle: Path) -> dict[str, str]:
        return {
            "EDGEFLEET_MQTT_CA_FILE": str(bundle / "ca.crt"),
            "EDGEFLEET_MQTT_CERT_FILE": str(bundle / "client.crt"),
            "EDGEFLEET_MQTT_KEY_FILE": str(bundle / "client.key"),
        }

    def harness_env(self) -> dict[str, str]:
        """What every test process inherits: the harness operator's certificate, the site's public
        key (nodes), the site key, the trusted operators and the CRL (orchestrators)."""
        return {
            **self.identity_env(self.harness_dir),
            "EDGEFLEET_SITE_PUBLIC_KEY": str(self.site_pub),
            "EDGEFLEET_SITE_KEY": str(self.site_key),
            "EDGEFLEET_OPERATOR_KEYS": str(self.pki.dir),
            "EDGEFLEET_TLS_CRL_FILE": str(self.pki.crl_path),
        }

    def orchestrator_env(self) -> dict[str, str]:
        env = read_env(self.pki.bundle_dir("orchestrator") / "edgefleet.env")
        return {k: v for k, v in env.items() if k not in ("EDGEFLEET_SITE", "EDGEFLEET_MQTT_URL")}

    def node_env(self, node_id: str) -> dict[str, str]:
        """A node's own certificate (issued now if it has none): MQTT and its gRPC server."""
        bundle = self.pki.bundle_dir(node_id)
        with self._lock:
            if not (bundle / "client.crt").exists():
                # also valid for 127.0.0.1, where every test node listens (`enroll-node --host`)
                self.pki.issue(node_id, "node", force=True, hosts=["127.0.0.1"])
        return {**self.identity_env(bundle), "EDGEFLEET_SITE_PUBLIC_KEY": str(self.site_pub)}

    def signed(self, doc: DesiredState | dict[str, Any]) -> bytes:
        """A desired-state document signed with the site key, as the orchestrator publishes it
        (tests that publish desired state themselves, bad content included)."""
        parsed = doc if isinstance(doc, DesiredState) else DesiredState.model_validate(doc)
        return sign_desired(parsed, SiteKey.load(self.site_key).private).dumps()

    # -- clients in the test process ---------------------------------------------------------
    @property
    def harness_files(self) -> TlsFiles:
        return TlsFiles(self.harness_dir / "client.crt", self.harness_dir / "client.key", self.harness_dir / "ca.crt")

    def grpc_channel(
        self,
        address: str,
        node_id: str | None = None,
        options: list[Any] | None = None,
        client_cert: bool = True,
        api_key: str | None = None,
    ) -> grpc.Channel:
        """A mutual-TLS channel as the harness operator; `node_id`: the certificate expected.
        `client_cert=False`: TLS that trusts the site CA but shows no certificate (API-key clients);
        `api_key`: sent as `authorization: Bearer` on every call (the front door's gRPC listener)."""
        opts = [*(options or []), *(target_name(node_id) if node_id else [])]
        if client_cert:
            creds = channel_credentials(self.harness_files)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=(self.harness_dir / "ca.crt").read_bytes())
        if api_key:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(api_key))
        return grpc.secure_channel(address, creds, options=opts)

    def curl_args(self, client_cert: bool = True) -> list[str]:
        """curl's options to reach a site HTTPS server (trusting the CA, showing the harness certificate)."""
        args = ["--cacert", str(self.harness_dir / "ca.crt")]
        if client_cert:
            args += ["--cert", str(self.harness_dir / "client.crt"), "--key", str(self.harness_dir / "client.key")]
        return args

    def urlopen(self, url: str | urllib.request.Request, timeout: float = 10, client_cert: bool = True) -> Any:
        return urllib.request.urlopen(url, timeout=timeout, context=self.ssl_context(client_cert))

    def openai(self, base_url: str, api_key: str = "unused", client_cert: bool = True, **kw: Any) -> openai.OpenAI:
        """The official client over HTTPS trusting the site CA (with the harness certificate)."""
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        http = httpx.Client(verify=self.ssl_context(client_cert), timeout=kw["timeout"])
        return openai.OpenAI(base_url=base_url, api_key=api_key, http_client=http, **kw)

    def ssl_context(self, client_cert: bool = True) -> ssl.SSLContext:
        """HTTPS/MQTT client context trusting the site CA, showing the harness certificate."""
        return client_ssl_context(self.harness_files if client_cert else None, ca=self.harness_dir / "ca.crt")

    def paho_tls(self, client: Any) -> None:
        """Configure a paho client to connect to the test brokers as the harness."""
        client.tls_set_context(self.ssl_context())


_site: TestSite | None = None


def site() -> TestSite:
    """The session's site, made on first use; its identity installed into os.environ."""
    global _site
    if _site is None:
        root = Path(tempfile.mkdtemp(prefix="edgefleet-test-site-"))
        _site = TestSite(root)
        os.environ.update(_site.harness_env())
    return _site


def remove() -> None:
    if _site is not None:
        shutil.rmtree(_site.root, ignore_errors=True)
