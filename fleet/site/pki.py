"""The site's X.509 identities: a site CA, the broker's server certificate, and one client
certificate per orchestrator, node, sensor and operator, with a CRL and a registry.

Layout of a PKI directory (private files 0600, the directory 0700): what never leaves the PKI
machine apart from what each service mounts.

    ca.key  <site>.key                          private: the CA, the site signing key (`init-pki`)
    bundles/<name>/{client.key,client.crt,ca.crt,edgefleet.env}   private: copied onto a device; the
                                                orchestrator's also holds site.key (it signs desired state)
    public/{ca.crt,crl.pem,identities.json,site.pub,certs/<name>.crt}   no secrets (broker, orchestrator)
    broker/{server.key,server.crt,acl,mosquitto.conf}   the broker mounts broker/ and public/

`publish()` keeps public/ and the orchestrator's site key current (every CLI verb runs it). The
earlier layout (public files at the top) is moved into public/ when first read, links left behind.

An identity's certificate subject CN is its name; its OUs name its kind and (operators) its role
(proto/access.py), which every service reads to decide what the caller may do. The broker takes
the CN as the MQTT user name (Mosquitto `use_identity_as_username`), so the CN is the principal of every ACL rule: every
MQTT connection of one device (a node has two) presents the same certificate.
Private key material is never logged; log lines name files and serials only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.fleet.site.pki_files import (
    has_legacy_layout,
    move_legacy_layout,
    public_dirs,
    refresh,
    write_private,
    write_public,
)
from edgefleet.proto.access import CERT_KINDS, DEFAULT_OPERATOR_ROLE, Role, kind_ou, role_ou
from edgefleet.proto.topics import check_name

log = logging.getLogger("edgefleet.pki")

KINDS = tuple(k.value for k in CERT_KINDS)
SERVER_KINDS = ("orchestrator", "node")
"""Kinds whose certificates may serve TLS (a console operator gets server use through `hosts`)."""
ORCHESTRATOR = "orchestrator"
ORCHESTRATOR_SITE_KEY = "site.key"  # the orchestrator bundle's copy of the site signing key
CA_DAYS = 3650
LEAF_DAYS = 825
CRL_DAYS = 397
"""A CRL past its next-update makes OpenSSL refuse every client: it is rewritten on every enroll,
revoke and `broker-config`; run one of them at least yearly."""


class PkiError(Exception):
    """A problem the operator can fix (no CA yet, name taken, unknown identity)."""


@dataclass
class Identity:
    name: str
    kind: str
    groups: list[str] = field(default_factory=list)
    serial: int = 0
    issued_at: str = ""
    revoked: bool = False
    revoked_at: str | None = None
    assigned_groups: list[str] = field(default_factory=list)  # `fleet assign-groups`: read in the ACL too
    role: str | None = None  # operators: viewer | operator | admin (proto/access.py), in the certificate too


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, site: str, kind: str | None = None, role: str | None = None) -> x509.Name:
    """Subject: the site, the identity's kind and (operators) role as OUs, then its name as CN."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"edgefleet site {site}")]
    if kind is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind_ou(kind)))
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role_ou(role)))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for a server certificate; duplicates dropped, order kept."""
    out: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


class SitePki:
    """One site's PKI directory. Not safe for two writers at once (an operator tool)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_key_path = directory / "ca.key"
        self.public_dir = directory / "public"
        self.ca_cert_path = self.public_dir / "ca.crt"
        self.crl_path = self.public_dir / "crl.pem"
        self.registry_path = self.public_dir / "identities.json"
        self.certs_dir = self.public_dir / "certs"
        self.site_pub_path = self.public_dir / "site.pub"
        self.broker_dir = directory / "broker"
        self.server_key_path = self.broker_dir / "server.key"
        self.server_cert_path = self.broker_dir / "server.crt"

    def cert_path(self, name: str) -> Path:  # in public/: the orchestrator trusts operators by it
        return self.certs_dir / f"{name}.crt"

    @property
    def site_key_path(self) -> Path:  # the site's Ed25519 signing key: `init-pki --site-key`, else <dir>/<site>.key
        return Path(str(self.broker_settings().get("site_key") or self.dir / f"{self.site}.key"))

    # -- registry -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.ca_key_path.exists() and (self.registry_path.exists() or has_legacy_layout(self.dir))

    def _load(self) -> dict[str, object]:
        if not self.exists():
            raise PkiError(f"no site PKI in {self.dir}: run `edgefleet fleet init-pki --dir {self.dir}` first")
        if not self.registry_path.exists():
            move_legacy_layout(self.dir, self.public_dir)
        data: dict[str, object] = json.loads(self.registry_path.read_text(encoding="utf-8"))
        return data

    def publish(self) -> None:
        """Bring public/ up to date (every identity's certificate, none of a name no longer in the
        registry; the site's public key) and the orchestrator bundle's copy of the site key (with
        `site.accepted.pub`: earlier keys it still accepts)."""
        self._load()
        public_dirs(self.public_dir, self.certs_dir)
        names = {i.name for i in self.identities()}
        for name in names:
            refresh(self.cert_path(name), self.bundle_dir(name) / "client.crt", private=False)
        for stale in (p for p in self.certs_dir.glob("*.crt") if p.stem not in names):
            stale.unlink()
        key = self.site_key_path
        refresh(self.site_pub_path, key.with_suffix(".pub"), private=False)
        orch = self.bundle_dir(ORCHESTRATOR)
        if orch.is_dir():
            refresh(orch / ORCHESTRATOR_SITE_KEY, key, private=True)
            refresh(orch / "site.accepted.pub", key.with_name(key.stem + ".accepted.pub"), False, mirror=True)

    def _replaced_or_none(self) -> list[int]:
        return self.replaced_serials() if self.registry_path.exists() else []

    def broker_settings(self) -> dict[str, object]:
        """The broker choices (URL, port, sensor filters, …) kept so enroll and revoke regenerate
        the same configuration `broker-config` wrote."""
        raw = self._load().get("broker", {})
        assert isinstance(raw, dict)
        return raw

    def set_broker_settings(self, settings: dict[str, object]) -> None:
        data = self._load()
        data["broker"] = settings
        write_public(self.registry_path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    @property
    def site(self) -> str:
        return str(self._load()["site"])

    def identities(self) -> list[Identity]:
        raw = self._load()["identities"]
        assert isinstance(raw, dict)
        return [Identity(**v) for v in raw.values()]

    def get(self, name: str) -> Identity | None:
        return next((i for i in self.identities() if i.name == name), None)

    def replaced_serials(self) -> list[int]:
        """Serials of certificates that a re-enrollment (--force) replaced: revoked too."""
        raw = self._load().get("replaced_serials", [])
        assert isinstance(raw, list)
        return [int(s) for s in raw]

    def _save(self, site: str, identities: list[Identity], replaced: list[int] | None = None) -> None:
        data = {
            "broker": self.broker_settings() if self.registry_path.exists() else {},
            "site": site,
            "identities": {i.name: asdict(i) for i in identities},
            "replaced_serials": sorted(set(replaced if replaced is not None else self._replaced_or_none())),
        }
        write_public(self.registry_path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    # -- CA -------------------------------------------------------------------------------------
    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path} is not an EC key")
        return key, x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    def init(self, site: str, broker_hosts: list[str], force: bool = False) -> None:
        """Create the CA, the broker's server certificate and the orchestrator's identity."""
        check_name("site", site)
        if self.exists() and not force:
            raise PkiError(f"{self.dir} already holds a site PKI; pass --force to replace it (every device re-enrolls)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if self.exists() and not self.registry_path.exists():
            move_legacy_layout(self.dir, self.public_dir)  # replaced below; no stale copy left at the top
        public_dirs(self.public_dir, self.certs_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"edgefleet site {site}"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"edgefleet {site} site CA"),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(self.ca_key_path, _key_pem(key))
        write_public(self.ca_cert_path, _cert_pem(cert))
        self._save(site, [], [])
        self.issue_server(broker_hosts)
        self.issue(ORCHESTRATOR, "orchestrator", hosts=broker_hosts)
        log.info("site PKI created", extra={"pki_dir": str(self.dir), "site": site})

    def _leaf(
        self,
        cn: str,
        pub: ec.EllipticCurvePublicKey,
        san: list[x509.GeneralName],
        client: bool,
        server: bool,
        kind: str | None = None,
        role: str | None = None,
    ) -> x509.Certificate:
        """A certificate for `cn`, for its purposes only: client use to call, server use only for
        what serves (broker, orchestrator, nodes, a console: `SERVER_KINDS` or a host given). The
        name is a DNS name, so a caller can ask for `pump-3` by name wherever it is."""
        ca_key, ca_cert = self._ca()
        now = _now()
        purposes = ((ExtendedKeyUsageOID.CLIENT_AUTH, client), (ExtendedKeyUsageOID.SERVER_AUTH, server))
        usages = [u for u, on in purposes if on]
        return (
            x509.CertificateBuilder()
            .subject_name(_name(cn, self.site, kind, role))
            .issuer_name(ca_cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    def issue_server(self, hosts: list[str]) -> None:
        """(Re)issue the broker's server certificate for localhost, 127.0.0.1 and `hosts`."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf("edgefleet broker", key.public_key(), san_entries(hosts), client=False, server=True)
        write_private(self.server_key_path, _key_pem(key))
        write_public(self.server_cert_path, _cert_pem(cert))
        log.info("broker certificate issued", extra={"hosts": hosts, "serial": cert.serial_number})

    # -- identities -----------------------------------------------------------------------------
    def bundle_dir(self, name: str) -> Path:
        return self.dir / "bundles" / name

    def issue(
        self,
        name: str,
        kind: str,
        groups: list[str] | None = None,
        force: bool = False,
        hosts: list[str] | None = None,
        role: str | None = None,
    ) -> Identity:
        """Issue a key and certificate for `name` into its bundle directory; returns the registry entry.

        A revoked name may be enrolled again (a new key, a new serial); a live one needs `force`
        (the old certificate is then revoked). Operators get a role (default `operator`)."""
        check_name(kind, name)
        if kind not in KINDS:
            raise PkiError(f"unknown identity kind {kind!r}; one of {', '.join(KINDS)}")
        if kind == "operator":
            role = role or DEFAULT_OPERATOR_ROLE.value
            if role not in {r.value for r in Role}:
                raise PkiError(f"unknown operator role {role!r}; one of {', '.join(r.value for r in Role)}")
        elif role is not None:
            raise PkiError(f"only operators have a role; {name} is a {kind}")
        for g in groups or []:
            check_name("group", g)
        site, current = self.site, self.identities()
        old = next((i for i in current if i.name == name), None)
        if old and not old.revoked and not force:
            raise PkiError(f"{name} is already enrolled as a {old.kind}; revoke it first (or pass --force)")
        if old and old.kind != kind and not old.revoked:
            raise PkiError(f"{name} is a {old.kind}; names are unique across kinds")
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [x509.DNSName(name)]
        if hosts is not None:  # also reachable as these hosts (the orchestrator's front door)
            san += [e for e in san_entries(hosts) if e != x509.DNSName(name)]
        server = kind in SERVER_KINDS or hosts is not None
        cert = self._leaf(name, key.public_key(), san, client=True, server=server, kind=kind, role=role)
        bundle = self.bundle_dir(name)
        bundle.mkdir(parents=True, exist_ok=True)
        bundle.chmod(0o700)
        write_private(bundle / "client.key", _key_pem(key))
        write_public(bundle / "client.crt", _cert_pem(cert))
        write_public(bundle / "ca.crt", self.ca_cert_path.read_bytes())
        write_public(self.cert_path(name), _cert_pem(cert))
        ident = Identity(name, kind, sorted(set(groups or [])), cert.serial_number, _now().isoformat(), role=role)
        replaced = self.replaced_serials()
        if old is not None:  # replaced: the old certificate stays revoked
            replaced.append(old.serial)
        self._save(site, [*(i for i in current if i.name != name), ident], replaced)
        self.write_crl()
        log.info("identity issued", extra={"identity": name, "kind": kind, "serial": cert.serial_number})
        return ident

    def assign_groups(self, name: str, groups: list[str]) -> Identity:
        """Set the groups assigned to node `name` at run time (its ACL block reads them as well)."""
        for g in groups:
            check_name("group", g)
        current = self.identities()
        ident = next((i for i in current if i.name == name), None)
        if ident is None or ident.kind != "node" or ident.revoked:
            raise PkiError(f"no enrolled node named {name!r} in {self.registry_path}")
        ident.assigned_groups = sorted(set(groups))
        self._save(self.site, current)
        log.info("groups assigned", extra={"identity": name, "groups": ident.assigned_groups})
        return ident

    def revoke(self, name: str) -> Identity:
        current = self.identities()
        ident = next((i for i in current if i.name == name), None)
        if ident is None:
            raise PkiError(f"no identity named {name!r} in {self.registry_path}")
        if ident.revoked:
            return ident
        ident.revoked, ident.revoked_at = True, _now().isoformat()
        self._save(self.site, current)
        self.write_crl()
        log.info("identity revoked", extra={"identity": name, "serial": ident.serial})
        return ident

    def write_crl(self) -> Path:
        """Rewrite crl.pem from the registry (every revoked serial)."""
        ca_key, ca_cert = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        revoked = {i.serial: i.revoked_at or i.issued_at for i in self.identities() if i.revoked}
        revoked.update({s: now.isoformat() for s in self.replaced_serials() if s not in revoked})
        for serial, when in sorted(revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(dt.datetime.fromisoformat(when))
                .build()
            )
        crl = builder.sign(ca_key, hashes.SHA256())
        write_public(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return self.crl_path
