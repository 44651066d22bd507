"""The site's revocation list, delivered over MQTT: a revoked identity is refused on every node
within seconds, offline from the PKI.

The orchestrator publishes the CA's CRL retained on `pki/crl` (`Topics.crl()`) whenever it changes.
A node takes one only when the site CA (its TLS CA file) signed it and it is not older than the one
it holds (`last_update`; at the same `last_update` it must keep every serial already revoked), then
writes it atomically to `NodeSettings.crl_file()`, which the gRPC interceptor rereads
(plumbing/site_tls.py `Revocations`). Anything else (not a CRL, another issuer, a bad signature, an
older list) is logged at WARNING and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edgefleet.node.settings import NodeSettings
from edgefleet.plumbing.atomic_files import write_atomic

_PEM = Encoding.PEM

log = logging.getLogger("edgefleet.node.crl")

MAX_CRL_BYTES = 8 * 1024 * 1024
"""Far above any site's CRL (a revoked serial is ~40 bytes of PEM); larger payloads are refused unread."""


class CrlRefused(ValueError):
    """Why a CRL payload was not taken (logged; the node keeps the list it holds)."""


class CrlSync:
    """Checks CRLs against the site CA and keeps the newest at `target` (the one the node applies)."""

    def __init__(self, ca_file: Path, target: Path) -> None:
        self.ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        self.ca_file, self.target = ca_file, target
        self.held: x509.CertificateRevocationList | None = None
        try:
            self.held = self._check(target.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, CrlRefused) as e:  # damaged or from another site: the next good one replaces it
            log.warning("the CRL kept on disk is not usable", extra={"crl": str(target), "reason": str(e)})

    @classmethod
    def for_settings(cls, settings: NodeSettings) -> CrlSync | None:
        """None in insecure mode or without a site CA (nothing to check a CRL against)."""
        tls = settings.tls_files() if not settings.insecure else None
        if tls is None:
            log.info("no site CA: revocation lists over MQTT are not applied")
            return None
        target = settings.crl_file()
        if tls.crl is not None and tls.crl != target:
            log.info(
                "EDGEFLEET_TLS_CRL_FILE is set: gRPC refuses serials in it and in the CRL the site publishes",
                extra={"crl_file": str(tls.crl), "received_into": str(target)},
            )
        try:
            return cls(tls.ca, target)
        except (OSError, ValueError) as e:  # the gRPC server refuses to start on the same file, saying why
            log.error(
                "the site CA cannot be read: CRLs over MQTT are not applied",
                extra={"ca": str(tls.ca), "reason": str(e)},
            )
            return None

    # -- checks -----------------------------------------------------------------------------------
    def _check(self, payload: bytes) -> x509.CertificateRevocationList:
        """The CRL in `payload` if the site CA signed it; CrlRefused naming what is wrong."""
        if len(payload) > MAX_CRL_BYTES:
            raise CrlRefused(f"payload of {len(payload)} bytes is larger than {MAX_CRL_BYTES} bytes")
        try:
            crl = x509.load_pem_x509_crl(payload)
        except ValueError as e:
            raise CrlRefused(f"not a PEM certificate revocation list: {e}") from e
        if crl.issuer != self.ca.subject:
            raise CrlRefused(
                f"issued by {crl.issuer.rfc4514_string()}, not the site CA {self.ca.subject.rfc4514_string()}"
            )
        if not crl.is_signature_valid(self.ca.public_key()):  # type: ignore[arg-type]
            raise CrlRefused(f"its signature does not verify with the site CA ({self.ca_file})")
        return crl

    def _not_older(self, crl: x509.CertificateRevocationList) -> None:
        held = self.held
        if held is None:
            return
        new_at, held_at = crl.last_update_utc, held.last_update_utc
        if new_at < held_at:
            raise CrlRefused(f"it was issued {_iso(new_at)}, before the one this node holds ({_iso(held_at)})")
        if new_at == held_at:  # issued in the same second: it must still revoke everything the held one does
            missing = _serials(held) - _serials(crl)
            if missing:
                raise CrlRefused(
                    f"it was issued at the same time as the one this node holds ({_iso(held_at)}) but "
                    f"lacks {len(missing)} of its revoked serials"
                )

    # -- input ------------------------------------------------------------------------------------
    def accept(self, payload: bytes, source: str = "") -> bool:
        """Take a CRL if it is the site's and not older than the one held; whether it was written."""
        if not payload:  # a cleared retained message: keep the list held (revocations are not undone)
            log.info("empty CRL message ignored", extra={"topic": source})
            return False
        try:
            crl = self._check(payload)
            self._not_older(crl)
        except CrlRefused as e:
            log.warning("CRL refused; keeping the one held", extra={"topic": source, "reason": str(e)})
            return False
        if self.held is not None and crl.public_bytes(_PEM) == self.held.public_bytes(_PEM):
            return False  # the same list again (every reconnect sends the retained copy)
        write_atomic(self.target, crl.public_bytes(_PEM))  # a reader sees the old list or the new
        self.held = crl
        log.info(
            "CRL applied",
            extra={"crl": str(self.target), "revoked": len(_serials(crl)), "issued": _iso(crl.last_update_utc)},
        )
        return True

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        """The MQTT handler of `Topics.crl()`."""
        self.accept(bytes(msg.payload), msg.topic)


def _serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {r.serial_number for r in crl}


def _iso(t: dt.datetime) -> str:
    return t.isoformat()
