"""Operator accounts and sessions on real SQLite and real Argon2id; the CLI entry (the login limiter:
test_login_limits.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.fleet.console.accounts import AccountError, Accounts
from edgefleet.fleet.console.settings import ConsoleSettings


def test_passwords_are_hashed_with_argon2id_and_verified(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "c.db")
    assert accounts.add("olivia", "operator", "long enough password") is True
    stored = accounts.db.execute("SELECT password_hash FROM operators").fetchone()[0]
    assert stored.startswith("$argon2id$") and "long enough" not in stored
    assert accounts.verify("olivia", "long enough password") == "operator"
    assert accounts.verify("olivia", "wrong password") is None
    assert accounts.verify("nobody", "long enough password") is None


def test_bad_accounts_are_refused(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "c.db")
    with pytest.raises(AccountError, match="role 'admin'"):
        accounts.add("a", "admin", "long enough password")
    with pytest.raises(AccountError, match="at least 8"):
        accounts.add("a", "viewer", "short")
    with pytest.raises(AccountError, match="invalid"):
        accounts.add("../a", "viewer", "long enough password")


def test_sessions_expire_and_a_new_password_ends_them(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "c.db")
    accounts.add("v", "viewer", "long enough password")
    token, session = accounts.open_session("v", 60)
    assert accounts.session(token) == session and not session.can_write
    stored = accounts.db.execute("SELECT token_sha256 FROM sessions").fetchone()[0]
    assert token not in stored  # only the token's hash is kept
    expired, _ = accounts.open_session("v", -1)
    assert accounts.session(expired) is None
    accounts.add("v", "operator", "another long password")
    assert accounts.session(token) is None


def test_operator_add_reads_the_password_from_stdin(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFLEET_CONSOLE_DATA_FILE": str(tmp_path / "c.db")}
    cmd = [
        sys.executable,
        "-m",
        "edgefleet.fleet.console",
        "operator",
        "add",
        "ann",
        "--role",
        "viewer",
        "--password-stdin",
    ]
    r = subprocess.run(cmd, input="a good password\n", capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and "created viewer ann" in r.stdout, r.stderr
    assert Accounts(tmp_path / "c.db").verify("ann", "a good password") == "viewer"
    r = subprocess.run(cmd, input="short\n", capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2 and "at least 8" in r.stderr


def test_settings_refuse_a_bad_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_CONSOLE_ADDRESS", "nowhere")
    with pytest.raises(ValueError, match="HOST:PORT"):
        ConsoleSettings()
    monkeypatch.setenv("EDGEFLEET_CONSOLE_ADDRESS", "127.0.0.1:9000")
    assert ConsoleSettings().host_port() == ("127.0.0.1", 9000)
