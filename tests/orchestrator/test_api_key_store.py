"""The API-key store and its verification (no front door): hashing, expiry, revocation, limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.orchestrator.api_keys import ApiKeyError, KeyStore, Verifier, hash_secret, parse_expires, split_token
from edgefleet.proto.error_codes import ErrorCode


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
    assert v.authenticate(f"Bearer {token}").allowed
    assert v.authenticate(None).refused == ErrorCode.UNAUTHENTICATED
    assert v.authenticate(token).refused == ErrorCode.UNAUTHENTICATED  # no scheme
    assert v.authenticate(f"Bearer {token}x").refused == ErrorCode.UNAUTHENTICATED
    assert v.authenticate("Bearer ef-000000000000-nope").refused == ErrorCode.UNAUTHENTICATED
    assert v.authenticate("Bearer garbage").refused == ErrorCode.UNAUTHENTICATED
    store.revoke("app")
    refused = v.authenticate(f"Bearer {token}")
    assert refused.refused == ErrorCode.UNAUTHENTICATED and "revoked" in refused.message
    with pytest.raises(ApiKeyError):
        store.revoke("nobody")


def test_expiry(store: KeyStore) -> None:
    _, token = store.create("old", expires_at=time.time() - 1)
    assert Verifier(store).authenticate(f"Bearer {token}").refused == ErrorCode.UNAUTHENTICATED
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
    assert Verifier.authorize(key, "m3").refused == ErrorCode.PERMISSION_DENIED
    everyone, _ = store.create("all")
    assert everyone.allows("anything", "x")


def test_rpm_and_tpm_windows_and_usage(store: KeyStore) -> None:
    _, token = store.create("rpm", rpm=2)
    _, token2 = store.create("tpm", tpm=10)
    v = Verifier(store, refresh_s=0)
    t0 = 1_000_000.0
    assert v.authenticate(f"Bearer {token}", t0).allowed
    assert v.authenticate(f"Bearer {token}", t0 + 1).allowed
    over = v.authenticate(f"Bearer {token}", t0 + 2)
    assert over.refused == ErrorCode.RATE_LIMITED and 1 <= over.retry_after_s <= 60
    assert v.authenticate(f"Bearer {token}", t0 + 61).allowed
    ok = v.authenticate(f"Bearer {token2}", t0)
    assert ok.allowed and ok.key is not None
    v.add_tokens(ok.key, 12, t0)
    assert v.authenticate(f"Bearer {token2}", t0 + 1).refused == ErrorCode.RATE_LIMITED
    v.flush()
    usage = {k.name: (k.requests, k.tokens) for k in store.all_keys()}
    assert usage == {"rpm": (3, 0), "tpm": (1, 12)}
