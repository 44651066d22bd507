"""Publishes the site's CRL to the nodes: retained on `pki/crl` (`Topics.crl()`), QoS 1, at start
and within `poll_s` of every change of the file (`fleet revoke` rewrites it), and again after every
reconnect, so a broker that lost its retained messages heals.

The file is the PKI's crl.pem (EDGEFLEET_TLS_CRL_FILE). A file that is not a CRL is not published
(WARNING, once per version of the file): nodes would refuse it anyway, and must keep the last good one.
Nodes check the signature against the site CA themselves (node/control/crl_sync.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cryptography import x509

from edgefleet.plumbing.mqtt_link import MqttLink

log = logging.getLogger("edgefleet.orchestrator.crl")

POLL_S = 0.5


class CrlPublisher:
    def __init__(self, path: Path | None, topic: str, link: MqttLink, poll_s: float = POLL_S) -> None:
        self.path, self.topic, self.link, self.poll_s = path, topic, link, poll_s
        self._done: tuple[int, int] | None = None  # (mtime_ns, size) of the file published or refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0

    def start(self) -> None:
        if self.path is None:
            log.info("no CRL file (EDGEFLEET_TLS_CRL_FILE): revocations are not published to the nodes")
            return
        self._thread = threading.Thread(target=self._loop, name="edgefleet-crl", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # never let the thread die: the next change must still go out
                log.exception("CRL publishing failed")
            self._stop.wait(self.poll_s)

    def poll(self) -> bool:
        """Publish the file if it changed since it was last published (or the link reconnected)."""
        if self.path is None:
            return False
        if not self.link.connected.is_set():
            self._done = None  # publish again once connected
            return False
        try:
            st = self.path.stat()
        except OSError as e:
            if self._done != (-1, -1):
                log.warning("CRL file missing; nothing to publish", extra={"crl": str(self.path), "reason": str(e)})
                self._done = (-1, -1)
            return False
        key = (st.st_mtime_ns, st.st_size)
        if key == self._done:
            return False
        data = self.path.read_bytes()
        after = self.path.stat()
        if (after.st_mtime_ns, after.st_size) != key:  # written while read: take it at the next poll
            return False
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as e:
            log.warning("CRL file is not a PEM CRL; not published", extra={"crl": str(self.path), "reason": str(e)})
            self._done = key
            return False
        if not self.link.publish_wait(self.topic, data, retain=True):
            log.warning("CRL not acknowledged by the broker; trying again", extra={"topic": self.topic})
            return False
        self._done = key
        self.published += 1
        log.info(
            "CRL published",
            extra={"topic": self.topic, "revoked": sum(1 for _ in crl), "issued": crl.last_update_utc.isoformat()},
        )
        return True
