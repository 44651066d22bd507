"""Signed operator commands: the signed bytes, signing and verification (proto/signing.py), and the
orchestrator's checks of operator, time and nonce (orchestrator/command_auth.py) against a real PKI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.fleet.site.pki import SitePki
from edgefleet.orchestrator.command_auth import CommandAuth, NonceCache, OperatorKeys, Refused
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import parse_payload
from edgefleet.proto.signing import (
    command_bytes,
    load_operator_key,
    public_key_id,
    sign_command,
    verify_command,
)

NOW = 1_800_000_000.0


def altered(cmd: Command, **change: object) -> Command:
    """`cmd` with fields changed after it was signed (as a forger would)."""
    return Command(cmd.request.model_copy(update=change))


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP256R1()), Ed25519PrivateKey.generate])
def test_a_signed_command_verifies_after_the_wire_and_not_when_altered(make: object) -> None:
    key = make()  # type: ignore[operator]
    signed = sign_command(Command(op="rm-rule", name="r1", target="line"), "lab", "alice", key, now=NOW)
    envelope = signed.request
    assert envelope.operator == "alice" and envelope.signed_at == int(NOW) and len(envelope.nonce) == 32
    assert envelope.key_id == public_key_id(key.public_key())
    wire = parse_payload(Command, signed.dumps())
    verify_command(wire, "lab", key.public_key())
    for change in ({"name": "r2"}, {"operator": "bob"}, {"signed_at": int(NOW) + 1}, {"nonce": "0" * 32}):
        with pytest.raises(ValueError) as e:
            verify_command(altered(wire, **change), "lab", key.public_key())
        assert e.value.code == ErrorCode.BAD_SIGNATURE, change  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="does not verify"):
        verify_command(wire, "other-site", key.public_key())  # bound to the site


def test_unsigned_other_key_and_garbage_signatures_are_refused() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError) as e:
        verify_command(Command(op="status"), "lab", key.public_key())
    assert e.value.code == ErrorCode.UNSIGNED  # type: ignore[attr-defined]
    signed = sign_command(Command(op="status"), "lab", "alice", other)
    with pytest.raises(ValueError, match="names key"):
        verify_command(signed, "lab", key.public_key())
    forged = altered(signed, key_id=public_key_id(key.public_key()), signature="not base64!")
    with pytest.raises(ValueError, match="does not verify"):
        verify_command(forged, "lab", key.public_key())


def test_the_signed_bytes_are_canonical_and_tagged() -> None:
    cmd = Command(op="status", operator="a", nonce="n", signed_at=5, signature="ignored")
    data = command_bytes(cmd, "lab")
    assert data.startswith(b"edgefleet-command/1\nlab\n")
    body = json.loads(data.split(b"\n", 2)[2])
    assert "signature" not in body and body["operator"] == "a" and body["nonce"] == "n"
    assert command_bytes(altered(cmd, signature="other"), "lab") == data


def test_nonce_cache_refuses_repeats_forgets_old_ones_and_stays_bounded() -> None:
    c = NonceCache(window_s=120, max_entries=3)
    assert c.add("a", NOW, NOW) and not c.add("a", NOW, NOW + 1)
    assert c.add("b", NOW, NOW + 200)  # "a" expired and was forgotten
    assert len(c) == 1
    for n in "cdef":
        assert c.add(n, NOW + 200, NOW + 200)
    assert len(c) == 3
    assert not c.add("g", NOW + 200, NOW + 200), "at or before the floor of dropped entries: cannot tell"
    assert c.add("h", NOW + 201, NOW + 201)


@pytest.fixture
def pki(tmp_path: Path) -> SitePki:
    p = SitePki(tmp_path / "pki")
    p.init("lab", ["localhost"])
    p.issue("alice", "operator")
    p.issue("bob", "operator", role="admin")
    p.issue("vera", "operator", role="viewer")
    p.issue("n1", "node")
    return p


def refused(auth: CommandAuth, cmd: Command) -> str:
    with pytest.raises(Refused) as e:
        auth.check(cmd)
    return e.value.code


def test_command_auth_refuses_each_way_a_command_can_be_untrusted(pki: SitePki) -> None:
    clock = [NOW]
    auth = CommandAuth("lab", OperatorKeys(pki.dir), required=True, clock=lambda: clock[0])
    alice = load_operator_key(pki.bundle_dir("alice") / "client.key")
    node_key = load_operator_key(pki.bundle_dir("n1") / "client.key")

    good = sign_command(Command(op="status"), "lab", "alice", alice, now=NOW)
    auth.check(good)
    assert refused(auth, good) == ErrorCode.REPLAYED
    assert refused(auth, Command(op="status")) == ErrorCode.UNSIGNED
    assert refused(auth, sign_command(Command(op="status"), "lab", "mallory", alice, now=NOW)) == "unknown_operator"
    assert refused(auth, sign_command(Command(op="status"), "lab", "n1", node_key, now=NOW)) == "unknown_operator"
    assert refused(auth, sign_command(Command(op="status"), "lab", "bob", alice, now=NOW)) == ErrorCode.BAD_SIGNATURE
    assert refused(auth, sign_command(Command(op="status"), "lab", "alice", alice, now=NOW - 121)) == ErrorCode.STALE
    assert refused(auth, sign_command(Command(op="status"), "lab", "alice", alice, now=NOW + 121)) == ErrorCode.STALE
    auth.check(sign_command(Command(op="status"), "lab", "alice", alice, now=NOW - 100))  # clock skew is fine

    pki.revoke("alice")  # read again at the next command
    assert refused(auth, sign_command(Command(op="status"), "lab", "alice", alice, now=NOW)) == "operator_revoked"
    pki.issue("alice", "operator")  # re-enrolled: a new key; the old one no longer signs for alice
    assert refused(auth, sign_command(Command(op="status"), "lab", "alice", alice, now=NOW)) == ErrorCode.BAD_SIGNATURE
    alice2 = load_operator_key(pki.bundle_dir("alice") / "client.key")
    auth.check(sign_command(Command(op="status"), "lab", "alice", alice2, now=NOW))


def test_command_auth_off_lets_everything_through(tmp_path: Path) -> None:
    auth = CommandAuth("lab", OperatorKeys(tmp_path / "no-pki"), required=False)
    auth.check(Command(op="rm-rule", target="line", name="x"))
    on = CommandAuth("lab", OperatorKeys(tmp_path / "no-pki"), required=True)
    key = ec.generate_private_key(ec.SECP256R1())
    assert refused(on, sign_command(Command(op="status"), "lab", "alice", key)) == "unknown_operator"


def test_key_commands_need_an_operator_signature_even_where_commands_need_none(pki: SitePki) -> None:
    """keys-create, keys-list, keys-revoke answer with secrets and change who may use the front door."""
    auth = CommandAuth("lab", OperatorKeys(pki.dir), required=False, clock=lambda: NOW)
    auth.check(Command(op="status"))  # an ordinary command: unsigned is fine here
    node_key = load_operator_key(pki.bundle_dir("n1") / "client.key")
    operator = load_operator_key(pki.bundle_dir("bob") / "client.key")
    for cmd in (Command(op="keys-list"), Command(op="keys-create", name="app"), Command(op="keys-revoke", name="a")):
        assert refused(auth, cmd) == ErrorCode.UNSIGNED
        assert refused(auth, sign_command(cmd, "lab", "n1", node_key, now=NOW)) == ErrorCode.UNKNOWN_OPERATOR
        auth.check(sign_command(cmd, "lab", "bob", operator, now=NOW))


def test_an_operator_runs_only_the_commands_of_its_role(pki: SitePki) -> None:
    """Roles come from the operator's certificate: viewers read, operators change, admins manage keys."""
    auth = CommandAuth("lab", OperatorKeys(pki.dir), required=True, clock=lambda: NOW)
    vera = load_operator_key(pki.bundle_dir("vera") / "client.key")
    alice = load_operator_key(pki.bundle_dir("alice") / "client.key")
    auth.check(sign_command(Command(op="status"), "lab", "vera", vera, now=NOW))
    push = Command(op="rm-template", target="g1", name="t")
    with pytest.raises(Refused) as e:
        auth.check(sign_command(push, "lab", "vera", vera, now=NOW))
    assert e.value.code is ErrorCode.PERMISSION_DENIED
    assert (
        str(e.value)
        == "operator 'vera' (role viewer) may not run rm-template on site lab: it needs role operator or higher"
    )
    auth.check(sign_command(push, "lab", "alice", alice, now=NOW))
    keys = Command(op="keys-list")
    assert refused(auth, sign_command(keys, "lab", "alice", alice, now=NOW)) == ErrorCode.PERMISSION_DENIED
