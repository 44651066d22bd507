"""The one SQLite migration runner, on real database files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgefleet.plumbing.sqlite_db import SchemaTooNew, migrate, open_database, schema_version

MIGRATIONS: list[str | list[str]] = [
    "CREATE TABLE a (x INTEGER)",
    ["CREATE TABLE b (y TEXT)", "INSERT INTO b VALUES ('seed')"],
]


def _version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_migrations_are_applied_once_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    db = open_database(path, MIGRATIONS)
    assert schema_version(db.conn) == 2
    assert db.execute("SELECT y FROM b").fetchall() == [("seed",)]
    db.conn.close()
    db = open_database(path, MIGRATIONS)  # the seeding INSERT is not run again
    assert db.execute("SELECT count(*) FROM b").fetchone()[0] == 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.conn.close()
    assert _version(path) == 2


def test_a_later_migration_is_applied_to_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_database(path, MIGRATIONS[:1]).conn.close()
    assert _version(path) == 1 and _tables(path) == {"a"}
    open_database(path, MIGRATIONS).conn.close()
    assert _version(path) == 2 and _tables(path) == {"a", "b"}


def test_a_database_of_a_newer_edgefleet_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_database(path, [*MIGRATIONS, "CREATE TABLE c (z BLOB)"]).conn.close()
    with pytest.raises(SchemaTooNew) as caught:
        open_database(path, MIGRATIONS)
    message = str(caught.value)
    assert "schema version 3" in message and "(2)" in message and "newer edgefleet" in message
    assert str(path) in message
    assert caught.value.found == 3 and caught.value.known == 2
    assert _version(path) == 3 and "c" in _tables(path)


def test_a_failing_migration_leaves_version_and_tables_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    open_database(path, MIGRATIONS[:1]).conn.close()
    broken = [*MIGRATIONS[:1], ["CREATE TABLE b (y TEXT)", "INSERT INTO no_such_table VALUES (1)"]]
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        open_database(path, broken)
    assert _version(path) == 1
    assert _tables(path) == {"a"}  # the first statement of the failed migration was rolled back too
    open_database(path, MIGRATIONS).conn.close()  # the fixed migration applies later
    assert _version(path) == 2


def test_the_runner_takes_any_connection_in_autocommit_mode(tmp_path: Path) -> None:
    """As the knowledge store opens its own (isolation_level=None) connections."""
    conn = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
    assert migrate(conn, MIGRATIONS, what="the test database") == 2
    assert migrate(conn, MIGRATIONS) == 2
    assert not conn.in_transaction
    conn.execute("PRAGMA user_version=9")
    with pytest.raises(SchemaTooNew, match="the test database has schema version 9"):
        migrate(conn, MIGRATIONS, what="the test database")
    assert not conn.in_transaction
    conn.close()


def test_the_knowledge_store_uses_the_same_runner_with_its_rebuild_hint(tmp_path: Path) -> None:
    from edgefleet.node.knowledge import sqlite as knowledge_sqlite
    from edgefleet.node.knowledge.errors import CorruptDatabase

    path = tmp_path / "knowledge.db"
    conn, _ = knowledge_sqlite.open_knowledge_database(path, [["CREATE TABLE t (x INTEGER)"]])
    conn.execute("PRAGMA user_version=4")
    conn.close()
    with pytest.raises(CorruptDatabase) as caught:
        knowledge_sqlite.open_knowledge_database(path, [["CREATE TABLE t (x INTEGER)"]])
    assert "schema version 4" in str(caught.value) and "rebuild-db" in str(caught.value)
    assert _version(path) == 4


def test_new_databases_vacuum_incrementally_and_give_deleted_space_back(tmp_path: Path) -> None:
    from edgefleet.plumbing.sqlite_db import reclaim_space

    db = open_database(tmp_path / "a.db", ["CREATE TABLE t (x BLOB)"])
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    with db.conn:
        db.conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,) for _ in range(2000)])
    reclaim_space(db.conn)
    full = (tmp_path / "a.db").stat().st_size
    with db.conn:
        db.conn.execute("DELETE FROM t")
    reclaim_space(db.conn)
    assert (tmp_path / "a.db").stat().st_size < full / 10
    assert (tmp_path / "a.db-wal").stat().st_size == 0


def test_an_existing_database_is_converted_to_incremental_vacuum(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    db = open_database(tmp_path / "old.db", ["CREATE TABLE IF NOT EXISTS t (x)"])
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
