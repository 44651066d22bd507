"""The API-key store and its verification (no front door): hashing, expiry, revocation, limits."""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.fleet import keys_commands
from edgefleet.plumbing.api_keys import ApiKeyError, KeyStore, Verifier, hash_secret, parse_expires, split_token


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    s = KeyStore(tmp_path / "keys.db")
    yield s
    s.close()


def test_create_keeps_only_a_hash_of_the_secret(store: KeyStore, tmp_path: Path) -> None:
    key, token = store.create("app", ["m1", "m1:ad"], rpm=5, tpm=100)
    key_id, secret = split_token(token) or ("", "")
    assert token.startswith("ef-") and key_id == key.key_id and len(secret) >= 40
    assert key.secret_hash == hash_secret(secret)
    assert key.models == ("m1", "m1:ad") and key.rpm == 5 and key.tpm == 100 and not key.revoked
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()
    with pytest.raises(ApiKeyError):
        store.create("app")
    with pytest.raises(ApiKeyError):
        store.create("bad name")


def test_verification(store: KeyStore) -> None:
    _, token = store.create("app")
    v = Verifier(store, refresh_s=0)
    assert v.authenticate(f"Bearer {token}").status == 200
    assert v.authenticate(None).status == 401
    assert v.authenticate(token).status == 401  # no scheme
    assert v.authenticate(f"Bearer {token}x").status == 401
    assert v.authenticate("Bearer ef-000000000000-nope").status == 401
    assert v.authenticate("Bearer garbage").status == 401
    store.revoke("app")
    refused = v.authenticate(f"Bearer {token}")
    assert refused.status == 401 and "revoked" in refused.message
    with pytest.raises(ApiKeyError):
        store.revoke("nobody")


def test_expiry(store: KeyStore) -> None:
    _, token = store.create("old", expires_at=time.time() - 1)
    assert Verifier(store).authenticate(f"Bearer {token}").status == 401
    now = 1_000_000.0
    assert parse_expires("30d", now) == now + 30 * 86400
    assert parse_expires("2030-01-01T00:00:00Z") == parse_expires("2030-01-01T00:00:00+00:00")
    assert parse_expires("") == 0
    with pytest.raises(ApiKeyError):
        parse_expires("soon")


def test_allow_list(store: KeyStore) -> None:
    key, _ = store.create("app", ["m1", "m2:ad"])
    assert key.allows("m1") and key.allows("m1", "any") and key.allows("m2", "ad")
    assert not key.allows("m2") and not key.allows("m3")
    assert Verifier.authorize(key, "m3").status == 403
    everyone, _ = store.create("all")
    assert everyone.allows("anything", "x")


def test_rpm_and_tpm_windows_and_usage(store: KeyStore) -> None:
    _, token = store.create("rpm", rpm=2)
    _, token2 = store.create("tpm", tpm=10)
    v = Verifier(store, refresh_s=0)
    t0 = 1_000_000.0
    assert v.authenticate(f"Bearer {token}", t0).status == 200
    assert v.authenticate(f"Bearer {token}", t0 + 1).status == 200
    over = v.authenticate(f"Bearer {token}", t0 + 2)
    assert over.status == 429 and 1 <= over.retry_after_s <= 60
    assert v.authenticate(f"Bearer {token}", t0 + 61).status == 200
    ok = v.authenticate(f"Bearer {token2}", t0)
    assert ok.status == 200 and ok.key is not None
    v.add_tokens(ok.key, 12, t0)
    assert v.authenticate(f"Bearer {token2}", t0 + 1).status == 429
    v.flush()
    usage = {k.name: (k.requests, k.tokens) for k in store.all_keys()}
    assert usage == {"rpm": (3, 0), "tpm": (1, 12)}


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"

    def cli(*argv: str) -> str:
        parser = argparse.ArgumentParser()
        keys_commands.add_parsers(parser.add_subparsers(dest="fleet_command"))
        out = io.StringIO()
        assert keys_commands.run(parser.parse_args([*argv, "--db", str(db)]), out) == 0
        return out.getvalue()

    created = cli("keys", "create", "app", "--models", "m1,m2", "--rpm", "3", "--expires", "7d")
    token = created.strip().splitlines()[-1]
    assert split_token(token)
    listed = json.loads(cli("keys", "list", "--json"))
    assert listed[0]["name"] == "app" and listed[0]["models"] == ["m1", "m2"] and listed[0]["state"] == "active"
    assert token not in json.dumps(listed) and "secret_hash" not in listed[0]
    assert "revoked" in cli("keys", "revoke", "app")
    assert "revoked" in cli("keys", "list")
    with pytest.raises(keys_commands.KeysCommandError):
        cli("keys", "revoke", "nobody")
