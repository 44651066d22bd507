"""The site PKI and the broker configuration computed from it, without a broker."""

from __future__ import annotations

import io
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.fleet import identity_commands
from edgefleet.fleet.identity_commands import read_env
from edgefleet.fleet.site.broker_config import BrokerPolicy, ListenerOptions, acl_text, mosquitto_conf
from edgefleet.fleet.site.pki import PkiError, SitePki
from edgefleet.proto.topics import Topics


def cli(pki: Path, *args: str, site: str = "lab") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = identity_commands.main(["--site", site, args[0], "--dir", str(pki), *args[1:]], out, err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def pki(tmp_path: Path) -> SitePki:
    rc, _, err = cli(tmp_path / "pki", "init-pki", "--broker-host", "broker.lab", "--broker-host", "10.0.0.5")
    assert rc == 0, err
    return SitePki(tmp_path / "pki")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_creates_ca_broker_and_orchestrator(pki: SitePki) -> None:
    ca, server = load(pki.ca_cert_path), load(pki.server_cert_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "broker.lab"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    orch = pki.get("orchestrator")
    assert orch is not None and orch.kind == "orchestrator"
    assert pki.dir.stat().st_mode & 0o777 == 0o700
    for key in (pki.ca_key_path, pki.server_key_path, pki.bundle_dir("orchestrator") / "client.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    assert read_env(pki.bundle_dir("orchestrator") / "edgefleet.env")["EDGEFLEET_MQTT_URL"] == "mqtts://broker.lab:8883"
    assert (pki.dir / "broker" / "acl").exists() and (pki.dir / "broker" / "mosquitto.conf").exists()
    assert cli(pki.dir, "init-pki")[0] == 2  # not over an existing PKI without --force


def test_enroll_node_writes_a_bundle(pki: SitePki) -> None:
    rc, out, err = cli(pki.dir, "enroll-node", "n1", "--groups", "line,press", "--install-dir", "/etc/edgefleet/id")
    assert rc == 0, err
    bundle = pki.bundle_dir("n1")
    cert = load(bundle / "client.crt")
    cert.verify_directly_issued_by(load(bundle / "ca.crt"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (bundle / "client.key").stat().st_mode & 0o777 == 0o600
    env = read_env(bundle / "edgefleet.env")
    assert env["EDGEFLEET_NODE_ID"] == "n1" and env["EDGEFLEET_GROUPS"] == "line,press"
    assert env["EDGEFLEET_MQTT_KEY_FILE"] == "/etc/edgefleet/id/client.key"
    assert env["EDGEFLEET_MQTT_URL"].startswith("mqtts://")
    assert "PRIVATE" not in out and (bundle / "client.key").read_text().splitlines()[1] not in out
    ident = pki.get("n1")
    assert ident is not None and ident.groups == ["line", "press"] and ident.serial == cert.serial_number
    registry = json.loads(pki.registry_path.read_text())
    assert registry["identities"]["n1"]["kind"] == "node"


def test_names_are_unique_and_valid(pki: SitePki) -> None:
    assert cli(pki.dir, "enroll-node", "n1")[0] == 0
    assert "already enrolled" in cli(pki.dir, "enroll-sensor", "n1")[2]
    assert cli(pki.dir, "enroll-operator", "orchestrator")[0] == 2
    assert cli(pki.dir, "enroll-node", "../x")[0] == 2
    assert cli(pki.dir, "enroll-node", "n2", "--groups", "a/#")[0] == 2
    with pytest.raises(PkiError):
        pki.revoke("nobody")


def test_revoke_and_reissue_go_into_the_crl(pki: SitePki) -> None:
    cli(pki.dir, "enroll-node", "n1")
    cli(pki.dir, "enroll-sensor", "s1")
    first = pki.get("s1").serial  # type: ignore[union-attr]
    assert cli(pki.dir, "enroll-sensor", "s1", "--force")[0] == 0  # re-keyed: the old one is revoked
    rc, out, _ = cli(pki.dir, "revoke", "n1")
    assert rc == 0 and "reload the broker" in out
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    crl_serials = {r.serial_number for r in crl}
    assert crl_serials == {pki.get("n1").serial, first}  # type: ignore[union-attr]
    assert crl.is_signature_valid(load(pki.ca_cert_path).public_key())  # type: ignore[arg-type]
    assert "user n1\n" not in (pki.dir / "broker" / "acl").read_text()
    assert "user s1\n" in (pki.dir / "broker" / "acl").read_text()
    assert cli(pki.dir, "enroll-node", "n1")[0] == 0  # a revoked name may enroll again, with a new key
    assert "user n1\n" in (pki.dir / "broker" / "acl").read_text()
    _, listing, _ = cli(pki.dir, "identities", "--json")
    assert {i["name"] for i in json.loads(listing)} == {"orchestrator", "n1", "s1"}


def test_acl_follows_the_topic_contract(pki: SitePki) -> None:
    pki.issue("n1", "node", ["g1"])
    pki.issue("s1", "sensor")
    pki.issue("op", "operator")
    t = Topics.for_site("lab", "factory/{site}/")
    acl = acl_text(pki.identities(), BrokerPolicy(t, sensor_filters=("plant/#",), node_outputs=("answers/#",)))
    block = acl.split("user n1\n")[1].split("\n\n")[0].splitlines()
    assert f"topic write {t.node_status('n1')}" in block
    assert f"topic read {t.desired_node('n1')}" in block
    assert f"topic read {t.desired_group('g1')}" in block
    assert f"topic read {t.group_requests('g1')}" in block
    assert "topic read plant/#" in block and "topic write answers/#" in block
    assert not any("desired" in line and "write" in line for line in block)
    assert "topic write actions/#" in block  # the site's actuator topics (BrokerPolicy default), for act tools
    assert all(line.split()[-1].startswith(("factory/lab/", "plant/", "answers/", "actions/")) for line in block)
    sensor = acl.split("user s1\n")[1].split("\n\n")[0].splitlines()
    assert sensor == ["topic write plant/#", "topic read actions/#"]  # actuators are sensor identities
    assert "topic readwrite factory/lab/#" in acl.split("user orchestrator\n")[1]
    assert "pattern" not in acl


def test_mosquitto_conf(pki: SitePki, tmp_path: Path) -> None:
    conf = mosquitto_conf(pki, tmp_path / "acl", ListenerOptions(port=8884, bind="0.0.0.0"))
    for line in (
        "listener 8884 0.0.0.0",
        "require_certificate true",
        "use_identity_as_username true",
        f"crlfile {pki.crl_path}",
        f"cafile {pki.dir / 'public' / 'ca.crt'}",
        f"keyfile {pki.dir / 'broker' / 'server.key'}",
        "allow_anonymous false",
        f"acl_file {tmp_path / 'acl'}",
    ):
        assert line in conf.splitlines()
    template = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto-secure.conf"
    assert "use_identity_as_username true" in template.read_text()


def _secrets_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]


def test_public_holds_what_services_mount_and_no_secret(pki: SitePki) -> None:
    """public/ (mounted by the broker and the orchestrator) has the CA certificate, the CRL, the
    registry, the site's public key and every identity's certificate, kept current by every verb."""
    assert cli(pki.dir, "enroll-operator", "alice", "--role", "admin")[0] == 0
    assert cli(pki.dir, "enroll-node", "n1")[0] == 0
    public = pki.public_dir
    assert {pki.ca_cert_path, pki.crl_path, pki.registry_path, pki.site_pub_path} <= set(public.iterdir())
    assert {p.name for p in pki.certs_dir.iterdir()} == {"orchestrator.crt", "alice.crt", "n1.crt"}
    for name in ("orchestrator", "alice", "n1"):
        assert pki.cert_path(name).read_bytes() == (pki.bundle_dir(name) / "client.crt").read_bytes()
    assert _secrets_under(public) == [], "no private key in public/"
    assert public.stat().st_mode & 0o777 == 0o755 and pki.certs_dir.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in public.rglob("*") if p.is_file())
    assert pki.site_pub_path.read_bytes() == (pki.dir / "lab.pub").read_bytes()
    # the broker's directory holds its own key only; the orchestrator's bundle its key and the site key
    assert [p.name for p in _secrets_under(pki.broker_dir)] == ["server.key"]
    orch = pki.bundle_dir("orchestrator")
    assert sorted(p.name for p in _secrets_under(orch)) == ["client.key", "site.key"]
    assert (orch / "site.key").read_bytes() == (pki.dir / "lab.key").read_bytes()
    assert (orch / "site.key").stat().st_mode & 0o777 == 0o600
    env = read_env(orch / "edgefleet.env")
    assert env["EDGEFLEET_SITE_KEY"] == str(orch.resolve() / "site.key")
    assert env["EDGEFLEET_OPERATOR_KEYS"] == str(public.resolve())
    assert env["EDGEFLEET_TLS_CRL_FILE"] == str(pki.crl_path.resolve())
    # revoke and re-enroll: the CRL and the certificate in public/ follow
    old = pki.cert_path("n1").read_bytes()
    assert cli(pki.dir, "revoke", "n1")[0] == 0
    assert {r.serial_number for r in x509.load_pem_x509_crl(pki.crl_path.read_bytes())} == {pki.get("n1").serial}  # type: ignore[union-attr]
    assert cli(pki.dir, "enroll-node", "n1")[0] == 0
    assert pki.cert_path("n1").read_bytes() != old and load(pki.cert_path("n1")).serial_number == pki.get("n1").serial  # type: ignore[union-attr]


def test_a_pki_directory_of_the_earlier_layout_moves_into_public(pki: SitePki) -> None:
    """ca.crt, crl.pem and identities.json at the top (before public/): the next verb moves them,
    leaving links, so a service still configured with the old paths reads the live files."""
    pki.issue("alice", "operator")
    for name in ("ca.crt", "crl.pem", "identities.json"):
        (pki.public_dir / name).rename(pki.dir / name)
    for p in pki.certs_dir.iterdir():
        p.unlink()
    (pki.bundle_dir("orchestrator") / "site.key").unlink()
    assert cli(pki.dir, "enroll-node", "n1")[0] == 0
    for name in ("ca.crt", "crl.pem", "identities.json"):
        old = pki.dir / name
        assert old.is_symlink() and old.resolve() == (pki.public_dir / name).resolve()
    assert {p.name for p in pki.certs_dir.iterdir()} == {"orchestrator.crt", "alice.crt", "n1.crt"}
    assert (pki.bundle_dir("orchestrator") / "site.key").exists()
    acl = (pki.broker_dir / "acl").read_text()
    assert "user n1\n" in acl and "user alice\n" in acl
    assert f"cafile {pki.ca_cert_path}" in (pki.broker_dir / "mosquitto.conf").read_text().splitlines()


def test_an_operators_role_is_in_its_certificate_and_the_listing(pki: SitePki) -> None:
    assert cli(pki.dir, "enroll-operator", "vera", "--role", "viewer")[0] == 0
    assert cli(pki.dir, "enroll-operator", "olga")[0] == 0  # the default role: operator
    with pytest.raises(PkiError, match="unknown operator role 'root'"):
        pki.issue("x", "operator", role="root")
    with pytest.raises(PkiError, match="only operators have a role"):
        pki.issue("s9", "sensor", role="admin")
    subject = load(pki.bundle_dir("vera") / "client.crt").subject
    ous = [str(a.value) for a in subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert ous == ["edgefleet:operator", "edgefleet-role:viewer"]
    usages = load(pki.bundle_dir("vera") / "client.crt").extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usages.value) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]  # an operator does not serve
    _, listing, _ = cli(pki.dir, "identities")
    lines = {line.split()[0]: line for line in listing.splitlines()}
    assert "role viewer" in lines["vera"] and "role operator" in lines["olga"]
