"""API keys for the front door (like LiteLLM's virtual keys): the store and the verification.

The keys file is a SQLite database owned by the orchestrator host. A key is shown once, as
`ef-<key id>-<secret>`; only the sha256 of the secret is kept (the secret is 32 random bytes, so
a plain hash is enough) and it is compared with `hmac.compare_digest`. Each key has a name, the
models/adapters it may use (empty: all; `model` allows the model with any adapter, `model:adapter`
only that adapter), the knowledge collections it may read (Retrieve, and generation with a
collection; empty: none, `*`: all), limits per minute on requests (rpm) and tokens (tpm) (0: none),
an expiry (0: never), a revoked flag, its creation time and usage counters. A key may be bound to
a site certificate's name (`identity`): its limits and allow-lists then apply to that certificate
at the front door too (orchestrator/front_door/auth.py).

Used by `edgefleet fleet keys …` (the store) and the front door (`Verifier`: re-reads the keys
at most every `refresh_s`, so a revoked key is refused within a second; rate windows in memory;
usage counters written back on each refresh).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.plumbing.sqlite_db import open_database
from edgefleet.proto.access import Principal
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.topics import valid_name

PREFIX = "ef"
WINDOW_S = 60.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIGRATIONS = [
    [
        """CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            key_id TEXT NOT NULL UNIQUE,
            secret_hash TEXT NOT NULL,
            models TEXT NOT NULL DEFAULT '[]',
            rpm INTEGER NOT NULL DEFAULT 0,
            tpm INTEGER NOT NULL DEFAULT 0,
            expires_at REAL NOT NULL DEFAULT 0,
            revoked INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            tokens INTEGER NOT NULL DEFAULT 0,
            last_used REAL NOT NULL DEFAULT 0
        )""",
    ],
    [  # keys made before collections were scoped read none (least privilege): grant with a new key
        "ALTER TABLE api_keys ADD COLUMN collections TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE api_keys ADD COLUMN identity TEXT NOT NULL DEFAULT ''",
    ],
]
ALL_COLLECTIONS = "*"


class ApiKeyError(Exception):
    """A problem the operator can fix (a bad name, a duplicate, an unknown key)."""


def default_db_path() -> Path:
    return Path.home() / ".local" / "share" / "edgefleet" / "api-keys.db"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """`ef-<key id>-<secret>` → (key id, secret); None when it is not of that shape."""
    parts = token.strip().split("-", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def parse_expires(value: str, now: float | None = None) -> float:
    """`Nd` (days from now), or an ISO 8601 time (UTC when it names no zone) → epoch seconds; '' → 0 (never)."""
    value = value.strip()
    if not value:
        return 0.0
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([dhm])", value)
    if m:
        unit = {"d": 86400.0, "h": 3600.0, "m": 60.0}[m.group(2)]
        return now + float(m.group(1)) * unit
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiKeyError(f"--expires {value!r} is neither ISO 8601 nor Nd (days)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


@dataclass(frozen=True)
class ApiKey:
    name: str
    key_id: str
    secret_hash: str
    models: tuple[str, ...]
    rpm: int
    tpm: int
    expires_at: float
    revoked: bool
    created_at: float
    requests: int
    tokens: int
    last_used: float
    collections: tuple[str, ...] = ()  # knowledge it may read; (): none, ("*",): all
    identity: str = ""  # a site certificate's name these limits also apply to; "": none

    def reads(self, collection: str) -> bool:
        return ALL_COLLECTIONS in self.collections or collection in self.collections

    def allows(self, model: str, adapter: str = "") -> bool:
        if not self.models:
            return True
        return model in self.models or bool(adapter and f"{model}:{adapter}" in self.models)

    def expired(self, now: float) -> bool:
        return bool(self.expires_at) and now >= self.expires_at

    def public(self) -> dict[str, Any]:
        """Everything but the hash of the secret."""
        return {
            "name": self.name,
            "key_id": self.key_id,
            "models": list(self.models),
            "collections": list(self.collections),
            "identity": self.identity,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "expires_at": self.expires_at,
            "revoked": self.revoked,
            "created_at": self.created_at,
            "requests": self.requests,
            "tokens": self.tokens,
            "last_used": self.last_used,
        }


def _row(r: Any) -> ApiKey:
    return ApiKey(
        name=r[0], key_id=r[1], secret_hash=r[2], models=tuple(json.loads(r[3])), rpm=int(r[4]), tpm=int(r[5]),
        expires_at=float(r[6]), revoked=bool(r[7]), created_at=float(r[8]), requests=int(r[9]), tokens=int(r[10]),
        last_used=float(r[11]), collections=tuple(json.loads(r[12])), identity=str(r[13]),
    )  # fmt: skip


_COLUMNS = (
    "name, key_id, secret_hash, models, rpm, tpm, expires_at, revoked, created_at, requests, tokens, last_used, "
    "collections, identity"
)


def clean_collections(collections: list[str] | None) -> list[str]:
    """The allow-list as stored: names, or `*` alone for all; a bad name is an ApiKeyError."""
    names = sorted({c.strip() for c in collections or [] if c.strip()})
    if ALL_COLLECTIONS in names:
        return [ALL_COLLECTIONS]
    bad = [c for c in names if not valid_name(c)]
    if bad:
        raise ApiKeyError(f"--collections {bad[0]!r}: a collection name, or '*' for all")
    return names


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(path, MIGRATIONS, "NORMAL", incremental_vacuum=False)
        self.conn = self.db.conn
        self._lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()

    def create(self, name: str, models: list[str] | None = None, rpm: int = 0, tpm: int = 0,
               expires_at: float = 0.0, collections: list[str] | None = None,
               identity: str = "") -> tuple[ApiKey, str]:  # fmt: skip
        """A new key; returns it and its token `ef-<key id>-<secret>` (shown once, never stored).
        `collections`: what it may read (none by default); `identity`: a site certificate's name
        whose front-door limits it sets (one live key per identity)."""
        if not _NAME.match(name):
            raise ApiKeyError(f"key name {name!r}: letters, digits, '_', '.', '@', '-' (up to 64)")
        if rpm < 0 or tpm < 0:
            raise ApiKeyError("--rpm and --tpm are 0 (no limit) or more")
        identity = identity.strip()
        if identity and not valid_name(identity):
            raise ApiKeyError(f"--identity {identity!r}: the name (CN) of a site certificate, as enrolled")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        allowed = sorted({m.strip() for m in models or [] if m.strip()})
        readable = clean_collections(collections)
        now = time.time()
        with self._lock:
            if self.conn.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise ApiKeyError(f"a key named {name!r} exists (revoke it, or choose another name)")
            if identity:
                live = self.conn.execute(
                    "SELECT name FROM api_keys WHERE identity = ? AND revoked = 0 "
                    "AND (expires_at = 0 OR expires_at > ?)",
                    (identity, now),
                ).fetchone()
                if live:
                    raise ApiKeyError(f"the key {live[0]!r} is bound to identity {identity!r}: revoke it first")
            self.conn.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 0, 0, 0, ?, ?)",
                (name, key_id, hash_secret(secret), json.dumps(allowed), rpm, tpm, expires_at, now,
                 json.dumps(readable), identity),
            )  # fmt: skip
            self.conn.commit()
        return self.get(name), f"{PREFIX}-{key_id}-{secret}"

    def get(self, name: str) -> ApiKey:
        r = self.conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise ApiKeyError(f"no key named {name!r}")
        return _row(r)

    def all_keys(self) -> list[ApiKey]:
        with self._lock:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY name").fetchall()
            self.conn.commit()  # end the read, so the next one sees other writers
        return [_row(r) for r in rows]

    def revoke(self, name: str) -> ApiKey:
        with self._lock:
            cur = self.conn.execute("UPDATE api_keys SET revoked = 1 WHERE name = ?", (name,))
            self.conn.commit()
        if cur.rowcount == 0:
            raise ApiKeyError(f"no key named {name!r}")
        return self.get(name)

    def add_usage(self, usage: dict[str, tuple[int, int, float]]) -> None:
        """key id → (requests, tokens, last used) added to the counters."""
        if not usage:
            return
        with self._lock:
            for key_id, (requests, tokens, last) in usage.items():
                self.conn.execute(
                    "UPDATE api_keys SET requests = requests + ?, tokens = tokens + ?, last_used = max(last_used, ?) "
                    "WHERE key_id = ?",
                    (requests, tokens, last, key_id),
                )
            self.conn.commit()


@dataclass
class Verdict:
    """The answer for one request: `refused` None (let it in), UNAUTHENTICATED, PERMISSION_DENIED or
    RATE_LIMITED (with `retry_after_s`). Each face maps the code through proto/error_table.py."""

    refused: ErrorCode | None = None
    message: str = ""
    key: ApiKey | None = None  # the limits and allow-lists that apply (a certificate's too)
    retry_after_s: int = 0
    who: Principal | None = None  # who calls (front door): an API key or a site certificate

    @property
    def allowed(self) -> bool:
        return self.refused is None


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def trim(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


class Verifier:
    """Checks tokens against the store (re-read at most every `refresh_s`) and keeps the rate windows."""

    def __init__(self, store: KeyStore, refresh_s: float = 0.5) -> None:
        self.store, self.refresh_s = store, refresh_s
        self._by_id: dict[str, ApiKey] = {}
        self._by_identity: dict[str, ApiKey] = {}
        self._read_at = float("-inf")
        self._windows: dict[str, _Window] = {}
        self._usage: dict[str, tuple[int, int, float]] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._read_at < self.refresh_s:
            return
        self._read_at = now
        usage, self._usage = self._usage, {}
        self.store.add_usage(usage)
        keys = self.store.all_keys()
        self._by_id = {k.key_id: k for k in keys}
        bound: dict[str, ApiKey] = {}
        for k in sorted((k for k in keys if k.identity), key=lambda k: k.created_at):
            if k.identity not in bound or not k.revoked:  # the newest live key, else the newest
                bound[k.identity] = k
        self._by_identity = bound

    def lookup(self, authorization: str | None, now: float | None = None) -> Verdict:
        """The live key of `Authorization: Bearer <token>`, or UNAUTHENTICATED; nothing counted."""
        now = time.time() if now is None else now
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Verdict(ErrorCode.UNAUTHENTICATED, "an API key is required: send `Authorization: Bearer <key>`")
        parts = split_token(token)
        with self._lock:
            self._refresh()
            key = self._by_id.get(parts[0]) if parts else None
        if parts is None or key is None or not hmac.compare_digest(hash_secret(parts[1]), key.secret_hash):
            return Verdict(ErrorCode.UNAUTHENTICATED, "the API key is not valid")
        if key.revoked:
            return Verdict(ErrorCode.UNAUTHENTICATED, f"the API key {key.name!r} is revoked")
        if key.expired(now):
            return Verdict(ErrorCode.UNAUTHENTICATED, f"the API key {key.name!r} has expired")
        return Verdict(key=key)

    def bound(self, identity: str) -> ApiKey | None:
        """The key bound to a site certificate's name (`keys create --identity`), live or not; None: none."""
        with self._lock:
            self._refresh()
            return self._by_identity.get(identity)

    def admit(self, key: ApiKey, now: float | None = None, who: str = "") -> Verdict:
        """RATE_LIMITED when the key's requests or tokens per minute are used up, else allowed (one
        request counted). `who` names the caller in the refusal (default: the API key)."""
        now = time.time() if now is None else now
        who = who or f"the API key {key.name!r}"
        with self._lock:
            w = self._windows.setdefault(key.key_id, _Window())
            w.trim(now)
            if key.rpm and len(w.requests) >= key.rpm:
                left = max(1, int(w.requests[0] + WINDOW_S - now + 0.999))
                return Verdict(ErrorCode.RATE_LIMITED, f"{who} is over its {key.rpm} requests per minute", key, left)
            if key.tpm and w.token_sum >= key.tpm:
                left = max(1, int(w.tokens[0][0] + WINDOW_S - now + 0.999))
                return Verdict(ErrorCode.RATE_LIMITED, f"{who} is over its {key.tpm} tokens per minute", key, left)
            w.requests.append(now)
            if key.key_id in self._by_id:  # a stored key (not a certificate's default limits): usage kept
                r, t, _ = self._usage.get(key.key_id, (0, 0, 0.0))
                self._usage[key.key_id] = (r + 1, t, now)
        return Verdict(key=key)

    def authenticate(self, authorization: str | None, now: float | None = None) -> Verdict:
        """UNAUTHENTICATED unless a live key, RATE_LIMITED when its requests or tokens per minute are used
        up; else allowed (one request counted)."""
        now = time.time() if now is None else now
        v = self.lookup(authorization, now)
        return self.admit(v.key, now) if v.allowed and v.key is not None else v

    @staticmethod
    def authorize(key: ApiKey, model: str, adapter: str = "") -> Verdict:
        """PERMISSION_DENIED when the key may not use this model/adapter."""
        if key.allows(model, adapter):
            return Verdict(key=key)
        what = f"{model}:{adapter}" if adapter else model
        why = f"the API key {key.name!r} may not use {what!r} (allowed: {', '.join(key.models)})"
        return Verdict(ErrorCode.PERMISSION_DENIED, why, key)

    def add_tokens(self, key: ApiKey, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        with self._lock:
            w = self._windows.setdefault(key.key_id, _Window())
            w.tokens.append((now, tokens))
            w.token_sum += tokens
            if key.key_id in self._by_id:
                r, t, last = self._usage.get(key.key_id, (0, 0, now))
                self._usage[key.key_id] = (r, t + tokens, max(last, now))

    def flush(self) -> None:
        with self._lock:
            usage, self._usage = self._usage, {}
            self.store.add_usage(usage)
