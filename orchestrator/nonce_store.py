"""The nonces of accepted signed commands, on disk: replay protection that survives a restart.

`NonceCache` (command_auth.py) decides; this store is its durable record. Each accepted nonce is
one row, committed (synchronous=FULL) in its own transaction before the command is queued, so a
command replayed to a restarted orchestrator, or one killed right after, is still refused. Rows
whose timestamp fell out of the window are pruned in the same transaction: a command that old is
refused as stale before its nonce is looked at. The file is `<registry>.nonces.db`, beside the
registry (orchestrator/runtime.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from edgefleet.plumbing.sqlite_db import open_database

log = logging.getLogger("edgefleet.orchestrator.nonce_store")

# rowid order is arrival order: a restart rebuilds the cache (and its floor) in the order it was filled
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS nonces (key TEXT NOT NULL UNIQUE, signed_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS nonces_by_time ON nonces (signed_at)",
    ]
]


class NonceStore:
    """SQLite rows (key, signed_at); every method holds the store's lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(path, MIGRATIONS, "FULL")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM nonces").fetchone()[0])

    def load(self, since: float) -> list[tuple[str, float]]:
        """(key, signed_at) of the nonces signed at or after `since`, in the order they were recorded."""
        with self._lock:
            rows = self.db.execute(
                "SELECT key, signed_at FROM nonces WHERE signed_at >= ? ORDER BY rowid", [since]
            ).fetchall()
        if rows:
            log.info("command nonces loaded", extra={"nonces": len(rows), "path": str(self.path)})
        return [(str(k), float(t)) for k, t in rows]

    def record(self, key: str, signed_at: float, prune_before: float) -> bool:
        """Add `key` in one committed transaction, first dropping rows signed before `prune_before`;
        False when it is already there (a replay). Raises sqlite3.Error when it cannot be written."""
        with self._lock, self.db.conn:
            self.db.execute("DELETE FROM nonces WHERE signed_at < ?", [prune_before])
            cur = self.db.execute(
                "INSERT INTO nonces (key, signed_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", [key, signed_at]
            )
            return bool(cur.rowcount == 1)

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()
