"""Secure by default: the one settings section that says how a process proves who it is on gRPC
and HTTPS, and the one switch that turns all of it off for local development.

`TransportSecurity` is the TLS section of the site settings (`SiteSettings`, which every part's
settings extend). It builds on the MQTT section: its certificate is the enrollment bundle's
(`EDGEFLEET_MQTT_CERT_FILE` …) unless `EDGEFLEET_TLS_*` name others, so one `edgefleet.env` from
`fleet enroll-*` sets up MQTT, gRPC and HTTPS alike. With `EDGEFLEET_INSECURE=1` nothing is
required and every start says so at WARNING, loudly.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from edgefleet.plumbing.mqtt_settings import MqttSettings

INSECURE_HINT = (
    "load an enrollment bundle's edgefleet.env (edgefleet fleet enroll-node / enroll-operator), "
    "or set EDGEFLEET_INSECURE=1 (or pass --insecure) for local development only"
)


class SecuritySettingsError(ValueError):
    """Secure mode lacks something it needs; the message says what and how to get it."""


@dataclass(frozen=True)
class TlsFiles:
    """A certificate, its key, the site CA peers must chain to, and optionally the site's CRL."""

    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain, private key, CA) as PEM bytes; a clear error naming a missing file."""
        out = []
        for what, path in (("certificate", self.cert), ("private key", self.key), ("CA certificate", self.ca)):
            try:
                out.append(path.read_bytes())
            except OSError as e:
                raise SecuritySettingsError(f"cannot read the TLS {what} {path}: {e.strerror or e}") from e
        return out[0], out[1], out[2]


class TransportSecurity(MqttSettings):
    """The insecure switch and the TLS files of gRPC and HTTPS (falling back to the MQTT ones)."""

    insecure: bool = Field(
        default=False,
        description="Local development only: plaintext gRPC/HTTP/MQTT, no certificates, unsigned desired "
        "state and commands accepted; logged at WARNING on every start (EDGEFLEET_INSECURE)",
    )
    tls_cert_file: Path | None = Field(
        default=None,
        description="Certificate this process shows on gRPC and HTTPS; empty: EDGEFLEET_MQTT_CERT_FILE "
        "(EDGEFLEET_TLS_CERT_FILE)",
    )
    tls_key_file: Path | None = Field(
        default=None,
        description="Private key of that certificate; empty: EDGEFLEET_MQTT_KEY_FILE (EDGEFLEET_TLS_KEY_FILE)",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="Site CA that peers' certificates must chain to; empty: EDGEFLEET_MQTT_CA_FILE "
        "(EDGEFLEET_TLS_CA_FILE)",
    )
    tls_crl_file: Path | None = Field(
        default=None,
        description="The site's crl.pem: gRPC/HTTPS peers whose certificate is in it are refused; reread "
        "when it changes (EDGEFLEET_TLS_CRL_FILE)",
    )

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file", "tls_crl_file", mode="before")
    @classmethod
    def _tls_files_empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    def tls_files(self) -> TlsFiles | None:
        """The certificate, key and CA to use (falling back to the MQTT ones), or None if incomplete."""
        cert = self.tls_cert_file or self.mqtt_cert_file
        key = self.tls_key_file or self.mqtt_key_file
        ca = self.tls_ca_file or self.mqtt_ca_file
        if cert is None or key is None or ca is None:
            return None
        return TlsFiles(cert, key, ca, self.tls_crl_file)

    def require_tls(self, what: str) -> TlsFiles | None:
        """The TLS files in secure mode (an error naming `what` if there are none); None when insecure."""
        if self.insecure:
            return None
        files = self.tls_files()
        if files is None:
            raise SecuritySettingsError(
                f"{what} needs a site certificate (EDGEFLEET_TLS_CERT_FILE/KEY_FILE/CA_FILE or the "
                f"EDGEFLEET_MQTT_* ones): {INSECURE_HINT}"
            )
        files.read()  # a missing file is an error at start, not at the first connection
        return files

    def require_secure_mqtt(self) -> None:
        """In secure mode the broker URL must be mqtts:// and a client certificate configured."""
        if self.insecure:
            return
        url = self.mqtt_url
        if not url:
            return
        if not url.startswith("mqtts://"):
            raise SecuritySettingsError(f"the broker URL {url} is plaintext; use mqtts:// — {INSECURE_HINT}")
        if self.mqtt_cert_file is None or self.mqtt_key_file is None:
            raise SecuritySettingsError(
                f"the site broker requires a client certificate (EDGEFLEET_MQTT_CERT_FILE/KEY_FILE): {INSECURE_HINT}"
            )

    def check_security(self) -> None:
        """What this part needs in secure mode (each part's settings say more); raises SecuritySettingsError."""
        self.require_secure_mqtt()
        self.require_tls("this process")

    def may_start(self, log: logging.Logger, prog: str, part: str) -> bool:
        """At start: False (reason logged and on stderr, for exit 2) when secure mode lacks something;
        otherwise True, after the loud warning if the mode is insecure."""
        try:
            self.check_security()
        except SecuritySettingsError as e:
            log.error("cannot start", extra={"reason": str(e)})
            sys.stderr.write(f"{prog}: {e}\n")
            return False
        self.warn_if_insecure(log, part)
        return True

    def warn_if_insecure(self, log: logging.Logger, part: str) -> None:
        if self.insecure:
            log.warning(
                "INSECURE MODE (EDGEFLEET_INSECURE): %s runs with plaintext gRPC/HTTP, accepts clients "
                "without certificates and unsigned documents; anyone on the network can command it. "
                "For local development only.",
                part,
                extra={"insecure": True},
            )
