"""CrlSync on real CRLs of a real site PKI (fleet/site/pki.py): what a node takes, keeps and refuses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edgefleet.fleet.site.pki import SitePki
from edgefleet.node.control.crl_sync import CrlSync

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def pki(tmp_path: Path) -> SitePki:
    p = SitePki(tmp_path / "pki")
    p.init("lab", [])
    return p


def crl(pki: SitePki, serials: list[int], at: dt.datetime = AT) -> bytes:
    """A CRL signed by the site CA, issued at `at`."""
    key = serialization.load_pem_private_key(pki.ca_key_path.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    b = x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(at)
    b = b.next_update(at + dt.timedelta(days=30))
    for s in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s).revocation_date(at).build())
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_newer_lists_are_taken_older_ones_and_weaker_twins_refused(pki: SitePki, tmp_path: Path) -> None:
    target = tmp_path / "node" / "crl.pem"
    sync = CrlSync(pki.ca_cert_path, target)
    seven, both = crl(pki, [7]), crl(pki, [7, 8])  # (ECDSA: each signing gives other bytes)
    assert sync.accept(seven)
    assert target.read_bytes() == seven
    assert not sync.accept(seven)  # the same list again: nothing to do
    assert not sync.accept(crl(pki, [], AT - dt.timedelta(hours=1)))  # older: a replay
    assert not sync.accept(crl(pki, [8]))  # same second, but it would un-revoke 7
    assert sync.accept(both)  # same second, everything held and more
    assert not sync.accept(b"")  # a cleared retained message: revocations stay
    assert not sync.accept(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    assert target.read_bytes() == both

    restarted = CrlSync(pki.ca_cert_path, target)  # the held list survives a restart
    assert not restarted.accept(seven)
    assert restarted.accept(crl(pki, [], AT + dt.timedelta(hours=1)))  # a newer list may be shorter (expired)


def test_a_list_of_another_ca_is_refused(pki: SitePki, tmp_path: Path) -> None:
    other = SitePki(tmp_path / "other")
    other.init("lab", [])
    target = tmp_path / "crl.pem"
    sync = CrlSync(pki.ca_cert_path, target)
    assert not sync.accept(crl(other, [7]))
    assert not target.exists()
    target.write_bytes(crl(other, [7]))  # planted on disk: not taken as held either
    assert CrlSync(pki.ca_cert_path, target).held is None
