"""Opening a part's SQLite database: WAL, a durability level, and its one migration runner.

Shared by the node's and the orchestrator's stores; each part keeps its own migrations. The
runner (`migrate`) takes any DB-API connection, so a store that needs another driver (the
knowledge store opens `pysqlite3` connections for extension loading) runs the same migrations
the same way.

A migration is one SQL statement or a list of statements. `PRAGMA user_version` counts the
migrations applied; each is applied with its version bump in one `BEGIN IMMEDIATE` transaction,
so a failing migration leaves the database (and its version) as it was. A database whose
version is higher than the migrations known is refused with `SchemaTooNew`: it was written by
a newer edgefleet, and this one must not guess at its tables.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlite_utils

log = logging.getLogger("edgefleet.sqlite")

Migration = str | Sequence[str]
"""One statement, or the statements of one migration (applied together)."""


class Connection(Protocol):
    """What the runner needs of a connection (sqlite3's, pysqlite3's)."""

    def execute(self, sql: str, /) -> Any: ...

    def executescript(self, sql: str, /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...


class SchemaTooNew(RuntimeError):
    """The database was written by a newer edgefleet (its schema version is beyond the known migrations)."""

    def __init__(self, what: str, found: int, known: int) -> None:
        super().__init__(
            f"{what} has schema version {found}, newer than this edgefleet knows ({known}): it was written "
            f"by a newer edgefleet; upgrade edgefleet to open it"
        )
        self.what, self.found, self.known = what, found, known


def schema_version(conn: Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _statements(migration: Migration) -> Sequence[str]:
    return (migration,) if isinstance(migration, str) else migration


def migrate(conn: Connection, migrations: Sequence[Migration], *, what: str = "the database") -> int:
    """Apply the migrations after `PRAGMA user_version`, each in one IMMEDIATE transaction; return the version.

    Raises SchemaTooNew (naming `what`) when the database is newer than `migrations`; a migration
    that fails is rolled back and its error raised, the version unchanged. Call it with no
    transaction open.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")  # taken before reading the version: two openers never both migrate
        try:
            version = schema_version(conn)
            if version > len(migrations):
                raise SchemaTooNew(what, version, len(migrations))
            if version < len(migrations):
                for statement in _statements(migrations[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if version == len(migrations):
            return version
        log.info("migration applied", extra={"database": what, "schema_version": version + 1})


def use_incremental_vacuum(conn: Connection, what: str = "the database") -> bool:
    """Turn on `auto_vacuum=INCREMENTAL`, so deleted rows can give their pages back to the disk.

    It takes effect by itself on a new (empty) file; an existing file is converted with one VACUUM,
    which needs room for a copy of it: when that fails the file keeps its mode (logged) and only
    the WAL is given back. Call with no transaction open. True when the mode is on.
    """
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        return True
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    if int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]):
        try:
            conn.execute("VACUUM")
        except Exception as e:
            log.warning("auto_vacuum not turned on", extra={"database": what, "reason": str(e)})
            return False
        log.info("database converted to incremental vacuum", extra={"database": what})
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2


def reclaim_space(conn: Connection) -> None:
    """Give free pages back to the disk: checkpoint the WAL and truncate it, then an incremental
    vacuum (when the file has that mode) and a second truncating checkpoint. Call with no
    transaction open; a busy reader only delays it."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        # Each step of this pragma frees one page and DB-API `execute` steps once; executescript
        # steps it to the end (2,000 pages: 15 ms).
        conn.executescript("PRAGMA incremental_vacuum;")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def connect_sqlite3(path: str) -> sqlite3.Connection:
    """The default driver: the interpreter's sqlite3, usable from several threads (callers serialize)."""
    return sqlite3.connect(path, check_same_thread=False)


def open_database(
    path: Path,
    migrations: Sequence[Migration],
    synchronous: Literal["NORMAL", "FULL"] = "FULL",
    *,
    connect: Callable[[str], sqlite3.Connection] = connect_sqlite3,
    incremental_vacuum: bool = True,
) -> sqlite_utils.Database:
    """Open `path` in WAL mode, apply the migrations not yet applied (see `migrate`).

    The connection may be used from several threads (the MQTT network thread and the gRPC
    loop); callers serialize their writes. Raises SchemaTooNew for a database of a newer edgefleet.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(str(path))
    try:
        db = sqlite_utils.Database(conn)
        if incremental_vacuum:
            use_incremental_vacuum(conn, f"the database {path}")
        db.enable_wal()
        db.execute(f"PRAGMA synchronous={synchronous}")
        migrate(conn, migrations, what=f"the database {path}")
    except BaseException:
        conn.close()
        raise
    return db
