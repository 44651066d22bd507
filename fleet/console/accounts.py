"""Operator accounts and login sessions in SQLite; passwords hashed with Argon2id (argon2-cffi).

A session token is a random 32-byte value in an HttpOnly cookie; only its SHA-256 is stored, so
a copy of the file logs nobody in. Each session has its own CSRF token, required on every write.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from edgefleet.plumbing.sqlite_db import open_database
from edgefleet.proto.topics import valid_name

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
MIN_PASSWORD_CHARS = 8

MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS operators (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, created REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        token_sha256 TEXT PRIMARY KEY, name TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
        csrf TEXT NOT NULL, expires REAL NOT NULL)""",
]


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


@dataclass(frozen=True)
class Session:
    name: str
    role: Role
    csrf: str
    expires: float

    @property
    def can_write(self) -> bool:
        return self.role == "operator"


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    def __init__(self, path: Path) -> None:
        self.db = open_database(path, MIGRATIONS, "FULL")
        self.hasher = PasswordHasher()  # Argon2id, the library's current memory-hard defaults
        self._lock = threading.Lock()
        # verifying against this keeps an unknown name as slow as a wrong password
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    def add(self, name: str, role: str, password: str) -> bool:
        """Create an account, or replace the role and password of an existing one. True: created."""
        if not valid_name(name):
            raise AccountError(f"operator name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise AccountError(f"role {role!r} must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
        hashed = self.hasher.hash(password)
        with self._lock, self.db.conn:
            existed = self.db.execute("SELECT 1 FROM operators WHERE name = ?", [name]).fetchone() is not None
            self.db.execute(
                "INSERT INTO operators VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "role = excluded.role, password_hash = excluded.password_hash",
                [name, role, hashed, time.time()],
            )
            self.db.execute("DELETE FROM sessions WHERE name = ?", [name])  # a new password ends old logins
        return not existed

    def verify(self, name: str, password: str) -> Role | None:
        """The account's role when the password is right, else None (same work for an unknown name)."""
        with self._lock:
            row = self.db.execute("SELECT role, password_hash FROM operators WHERE name = ?", [name]).fetchone()
        try:
            self.hasher.verify(row[1] if row else self._dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        return row[0] if row else None

    def open_session(self, name: str, lifetime_s: float) -> tuple[str, Session]:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = time.time() + lifetime_s
        with self._lock, self.db.conn:
            role = self.db.execute("SELECT role FROM operators WHERE name = ?", [name]).fetchone()[0]
            self.db.execute("DELETE FROM sessions WHERE expires < ?", [time.time()])
            self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", [_sha(token), name, csrf, expires])
        return token, Session(name, role, csrf, expires)

    def session(self, token: str) -> Session | None:
        with self._lock:
            row = self.db.execute(
                "SELECT s.name, o.role, s.csrf, s.expires FROM sessions s JOIN operators o ON o.name = s.name "
                "WHERE s.token_sha256 = ? AND s.expires > ?",
                [_sha(token), time.time()],
            ).fetchone()
        return Session(*row) if row else None

    def close_session(self, token: str) -> None:
        with self._lock, self.db.conn:
            self.db.execute("DELETE FROM sessions WHERE token_sha256 = ?", [_sha(token)])
