"""Revocations: the union of a node's CRL files, each reloaded when it changes, even within one tick."""

from __future__ import annotations

import os
from pathlib import Path

from edgefleet.fleet.site.pki import SitePki
from edgefleet.plumbing.site_tls import Revocations


def _copy_crl(pki: SitePki, to: Path) -> None:
    to.write_bytes(pki.crl_path.read_bytes())


def test_a_serial_in_either_file_is_revoked_and_a_rewrite_in_the_same_tick_is_seen(tmp_path: Path) -> None:
    pki = SitePki(tmp_path / "pki")
    pki.init("lab", ["localhost"])
    a, b = pki.issue("a", "operator"), pki.issue("b", "operator")
    given, received = tmp_path / "given.pem", tmp_path / "received.pem"
    _copy_crl(pki, given)
    _copy_crl(pki, received)
    revocations = Revocations([given, received], recheck_s=0)
    assert not revocations.revoked(a.serial) and not revocations.revoked(b.serial)
    pki.revoke("a")
    stamp = received.stat()
    _copy_crl(pki, received)  # the CRL received over MQTT, rewritten...
    os.utime(received, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # ...within the same timestamp tick
    assert revocations.revoked(a.serial), "a rewrite with the same mtime was missed"
    assert not revocations.revoked(b.serial)
    given.write_bytes(b"not a crl")  # a broken file keeps what it held: nobody is let back in
    assert revocations.revoked(a.serial)
