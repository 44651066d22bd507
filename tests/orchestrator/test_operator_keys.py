"""Which operators the orchestrator trusts (orchestrator/command_auth.py `OperatorKeys`), read from
the public part of a real site PKI made by the CLI.

Issue 22: the orchestrator container mounted the whole PKI directory (the CA key, every device's
key) to read operator certificates. Now it mounts public/ only; EDGEFLEET_OPERATOR_KEYS names
public/ or, as before, the PKI directory above it.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from edgefleet.fleet import identity_commands
from edgefleet.fleet.site.pki import SitePki
from edgefleet.orchestrator.command_auth import CommandAuth, OperatorKeys
from edgefleet.proto.access import Role
from edgefleet.proto.commands import Command
from edgefleet.proto.signing import load_operator_key, sign_command

NOW = 1_800_000_000.0


def cli(pki: Path, *args: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    rc = identity_commands.main(["--site", "lab", args[0], "--dir", str(pki), *args[1:]], out, err)
    assert rc == 0, err.getvalue()


@pytest.fixture
def pki(tmp_path: Path) -> SitePki:
    pki = SitePki(tmp_path / "pki")
    cli(pki.dir, "init-pki")
    cli(pki.dir, "enroll-operator", "alice", "--role", "admin")
    cli(pki.dir, "enroll-operator", "vera", "--role", "viewer")
    cli(pki.dir, "enroll-node", "n1")
    return pki


def test_operators_are_trusted_from_public_alone(pki: SitePki, tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"  # all the orchestrator container has of the PKI
    shutil.copytree(pki.public_dir, mounted)
    assert not [p for p in mounted.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    alice_key = load_operator_key(pki.bundle_dir("alice") / "client.key")
    for directory in (pki.dir, pki.public_dir, mounted):
        keys = OperatorKeys(directory)
        alice, vera = keys.get("alice"), keys.get("vera")
        assert alice is not None and alice.key is not None and alice.role == Role.ADMIN and not alice.revoked
        assert vera is not None and vera.key is not None and vera.role == Role.VIEWER
        assert keys.get("n1") is None, "a node is not an operator"
        auth = CommandAuth("lab", keys, required=True, clock=lambda: NOW)
        auth.check(sign_command(Command(op="status"), "lab", "alice", alice_key, now=NOW))


def test_a_revocation_reaches_either_spelling_of_the_setting(pki: SitePki) -> None:
    by_dir, by_public = OperatorKeys(pki.dir), OperatorKeys(pki.public_dir)
    assert not by_dir.get("alice").revoked and not by_public.get("alice").revoked  # type: ignore[union-attr]
    cli(pki.dir, "revoke", "alice")
    assert by_dir.get("alice").revoked and by_public.get("alice").revoked  # type: ignore[union-attr]


def test_a_pki_directory_of_the_earlier_layout_is_still_read(pki: SitePki, tmp_path: Path) -> None:
    """identities.json and ca.crt at the top, certificates in bundles/<name>/client.crt."""
    legacy = tmp_path / "legacy"
    (legacy / "bundles" / "alice").mkdir(parents=True)
    shutil.copy(pki.registry_path, legacy / "identities.json")
    shutil.copy(pki.ca_cert_path, legacy / "ca.crt")
    shutil.copy(pki.bundle_dir("alice") / "client.crt", legacy / "bundles" / "alice" / "client.crt")
    alice = OperatorKeys(legacy).get("alice")
    assert alice is not None and alice.key is not None and alice.role == Role.ADMIN
    assert OperatorKeys(legacy).get("vera").key is None  # type: ignore[union-attr]  # no certificate copied
