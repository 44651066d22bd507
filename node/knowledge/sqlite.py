"""Opening the knowledge store's SQLite files: driver choice, pragmas, migrations, corruption.

The knowledge store needs extension loading (sqlite-vec), which the interpreter's `sqlite3`
often lacks; `pysqlite3` (the `pysqlite3-binary` wheel, a recent SQLite with FTS5) has it and
is used when installed, as sqlite-utils itself does. Connections are opened in autocommit
mode (`isolation_level=None`): every transaction here is explicit (`BEGIN IMMEDIATE` for
writes, `BEGIN` for a consistent read snapshot).

Migrations are a list of statement lists, run by the plumbing's one runner
(`edgefleet.plumbing.sqlite_db.migrate`: `PRAGMA user_version` counts those applied, each in its
own transaction, a database of a newer edgefleet refused) on this module's connections.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from edgefleet.node.errors import StorageFull, disk_space, is_disk_full
from edgefleet.node.knowledge.errors import BackendUnavailable, CorruptDatabase, KnowledgeError
from edgefleet.plumbing import sqlite_db

try:
    import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - platforms without the wheel
    import sqlite3  # type: ignore[no-redef,unused-ignore]

log = logging.getLogger("edgefleet.node.knowledge")

DRIVER = sqlite3
DatabaseError: type[Exception] = sqlite3.DatabaseError
OperationalError: type[Exception] = sqlite3.OperationalError
Connection = Any  # pysqlite3 or sqlite3 connection; both untyped here
REBUILD_HINT = (
    "run `edgefleet-node rebuild-db` to move it aside and start an empty one, then install the collections again"
)

_CORRUPTION_MARKERS = ("malformed", "not a database", "corrupt", "disk image", "file is encrypted")


def is_corruption(error: BaseException) -> bool:
    return isinstance(error, sqlite3.DatabaseError) and any(m in str(error).lower() for m in _CORRUPTION_MARKERS)


# sqlite-vec reports a failed write as its own error ("Could not insert a new vector chunk"), hiding
# SQLITE_FULL; with less than this much room left, such a failure is taken for a full disk.
MASKED_FULL_MARGIN = 8 * 1024 * 1024


def _masked_full(error: BaseException, path: Path) -> bool:
    return "sqlite-vec" in str(error) and disk_space(path)[0] < MASKED_FULL_MARGIN


def connect(path: Path, *, load_vec: bool = False, busy_timeout_ms: int = 10_000) -> tuple[Connection, bool]:
    """A connection usable from any thread (callers serialise), and whether sqlite-vec loaded."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    vec = False
    if load_vec:
        vec = load_sqlite_vec(conn)
    return conn, vec


def load_sqlite_vec(conn: Connection) -> bool:
    try:
        import sqlite_vec  # type: ignore[import-untyped,unused-ignore]

        conn.enable_load_extension(True)
        try:
            sqlite_vec.load(conn)
        finally:
            conn.enable_load_extension(False)
        return True
    except (ImportError, AttributeError, sqlite3.OperationalError) as e:
        log.debug("sqlite-vec not loaded", extra={"error": str(e)})
        return False


def sqlite_vec_available() -> bool:
    """Whether this interpreter's SQLite driver can load sqlite-vec."""
    conn = sqlite3.connect(":memory:")
    try:
        return load_sqlite_vec(conn)
    finally:
        conn.close()


def require_vec(loaded: bool) -> None:
    if not loaded:
        raise BackendUnavailable(
            "the sqlite-vec extension cannot be loaded here (install `sqlite-vec` and `pysqlite3-binary`, "
            "or use vector_backend='numpy')"
        )


@contextlib.contextmanager
def transaction(conn: Connection, mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE") -> Iterator[Connection]:
    """One explicit transaction: committed when the block ends, rolled back when it raises."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_knowledge_database(
    path: Path,
    migrations: Sequence[Sequence[str]],
    *,
    synchronous: Literal["NORMAL", "FULL"] = "FULL",
    load_vec: bool = False,
    check: bool = True,
    what: str = "knowledge database",
) -> tuple[Connection, bool]:
    """Open (or create) a knowledge store or cache file at `path` in WAL mode, check it, apply pending
    migrations; a plain sqlite3 connection (with sqlite-vec when `load_vec` and available) and whether
    sqlite-vec loaded. The other parts' databases open through plumbing's `sqlite_db.open_database`.

    Raises CorruptDatabase when the file is not a database or `PRAGMA quick_check` finds damage.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn, vec = connect(path, load_vec=load_vec)
    try:
        sqlite_db.use_incremental_vacuum(conn, f"the {what} {path}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("WAL mode not available", extra={"path": str(path), "journal_mode": mode})
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if check:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if rows != ["ok"]:
                raise CorruptDatabase(f"the {what} {path} is damaged ({'; '.join(rows)}); {REBUILD_HINT}")
        migrate(conn, migrations, f"{what} {path}")
    except CorruptDatabase:
        conn.close()
        raise
    except sqlite3.DatabaseError as e:
        conn.close()
        if is_corruption(e) or not isinstance(e, sqlite3.OperationalError):
            raise CorruptDatabase(f"the {what} {path} cannot be read ({e}); {REBUILD_HINT}") from e
        raise
    return conn, vec


def migrate(conn: Connection, migrations: Sequence[Sequence[str]], what: str = "knowledge database") -> None:
    """Apply the pending migrations (the plumbing's runner); a newer schema is CorruptDatabase with the hint."""
    try:
        sqlite_db.migrate(conn, migrations, what=f"the {what}")
    except sqlite_db.SchemaTooNew as e:
        raise CorruptDatabase(f"{e}, or {REBUILD_HINT}") from e


def move_aside(path: Path) -> Path:
    """Rename `path` (and its -wal/-shm files) to `<name>.corrupt-<UTC time>`; return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    if path.exists():
        path.rename(target)
    return target


class Connections:
    """The store's connections: one writer (serialised by `write_lock`) and a pool of readers.

    Readers run inside a `BEGIN` snapshot (WAL), so they never see a half-done write and never
    wait for one. Every sqlite error that means damage is raised as CorruptDatabase.
    """

    def __init__(self, path: Path, writer: Connection, load_vec: bool) -> None:
        self.path = path
        self.writer = writer
        self.load_vec = load_vec
        self.write_lock = threading.RLock()
        self._readers: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.closed = False

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as e:
            if is_corruption(e):
                raise CorruptDatabase(f"the knowledge database {self.path} is damaged ({e}); {REBUILD_HINT}") from e
            if is_disk_full(e) or (isinstance(e, sqlite3.OperationalError) and _masked_full(e, self.path)):
                raise StorageFull("knowledge store", self.path, e) from e
            raise

    def _check_open(self) -> None:
        if self.closed:
            raise KnowledgeError("the knowledge store is closed")

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A pooled reader connection inside one read snapshot."""
        self._check_open()
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn, _ = connect(self.path, load_vec=self.load_vec)
        try:
            with self.guard(), transaction(conn, "DEFERRED"):
                yield conn
        finally:
            if self.closed:
                conn.close()
            else:
                self._readers.put(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One IMMEDIATE transaction on the writer connection; takes `write_lock` (re-entrant)."""
        with self.write_lock:
            self._check_open()
            with self.guard(), transaction(self.writer):
                yield self.writer

    def reclaim(self) -> bool:
        """Give freed pages and the WAL back to the disk (see sqlite_db.reclaim_space); never raises.

        False when it could not (a full disk: the checkpoint must first write the WAL's pages into the file)."""
        with self.write_lock:
            if self.closed:
                return False
            try:
                sqlite_db.reclaim_space(self.writer)
            except sqlite3.DatabaseError as e:
                log.warning("space not given back", extra={"path": str(self.path), "reason": str(e)})
                return False
            return True

    def close(self) -> None:
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
            self.writer.close()
            while True:
                try:
                    self._readers.get_nowait().close()
                except queue.Empty:
                    break
