"""Vector storage and nearest-neighbour search for the knowledge store: sqlite-vec or numpy.

Every vector is stored once in the plain table `vectors` (chunk rowid, collection, embedder
identity, float32 blob): the source of truth, readable by any SQLite. With sqlite-vec loaded,
the same vectors are also kept in a `vec0` virtual table per dimension (`vec_index_d<dims>`,
partitioned by collection, cosine distance) and searched there; without it, a collection's
vectors are read into a numpy matrix (cached per collection revision) and scanned.

The two stay in step through a counter in `meta`: every vector write bumps
`vectors_generation`; the sqlite-vec backend also stamps `vec_index_generation`. When a file
written by the numpy backend is opened with sqlite-vec, the counters differ and the index is
rebuilt from `vectors`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Literal

import numpy as np

from edgefleet.node.knowledge.sqlite import Connection

log = logging.getLogger("edgefleet.node.knowledge")

Backend = Literal["sqlite-vec", "numpy"]
_MATRIX_CACHE_COLLECTIONS = 8
_MAX_K = 4096


def _index_table(dims: int) -> str:
    return f"vec_index_d{int(dims)}"


def _meta_int(conn: Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


class VectorIndex:
    """Writes, deletes and searches vectors on a caller's connection, inside the caller's transaction."""

    def __init__(self, backend: Backend) -> None:
        self.backend: Backend = backend
        self._matrices: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._matrix_lock = threading.Lock()

    # -- writes (caller holds a write transaction) ------------------------------------------
    def _bump(self, conn: Connection) -> None:
        generation = _meta_int(conn, "vectors_generation") + 1
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vectors_generation', ?)", (str(generation),))
        if self.backend == "sqlite-vec":
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('vec_index_generation', ?)", (str(generation),)
            )

    def _ensure_table(self, conn: Connection, dims: int) -> str:
        table = _index_table(dims)
        conn.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {table} USING vec0("
            f"chunk_rowid INTEGER PRIMARY KEY, collection TEXT PARTITION KEY, "
            f"embedding float[{int(dims)}] distance_metric=cosine)"
        )
        return table

    def write(self, conn: Connection, collection: str, embedder: str, rowids: list[int], matrix: np.ndarray) -> None:
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        rows = [(rid, collection, embedder, matrix[i].tobytes()) for i, rid in enumerate(rowids)]
        conn.executemany("INSERT INTO vectors(chunk_rowid, collection, embedder, embedding) VALUES (?, ?, ?, ?)", rows)
        if self.backend == "sqlite-vec" and rows:
            table = self._ensure_table(conn, matrix.shape[1])
            conn.executemany(
                f"INSERT INTO {table}(chunk_rowid, collection, embedding) VALUES (?, ?, ?)",
                [(rid, collection, blob) for rid, _, _, blob in rows],
            )
        self._bump(conn)

    def delete(self, conn: Connection, dims: int, rowid_sql: str, params: tuple[object, ...]) -> None:
        """Delete the vectors of the chunk rowids that `rowid_sql` selects (run before deleting the chunks)."""
        conn.execute(f"DELETE FROM vectors WHERE chunk_rowid IN ({rowid_sql})", params)
        for table in self._tables(conn, dims):
            conn.execute(f"DELETE FROM {table} WHERE chunk_rowid IN ({rowid_sql})", params)
        self._bump(conn)

    def delete_collection(self, conn: Connection, collection: str, dims: int) -> None:
        conn.execute("DELETE FROM vectors WHERE collection = ?", (collection,))
        for table in self._tables(conn, dims):
            conn.execute(f"DELETE FROM {table} WHERE collection = ?", (collection,))
        self._bump(conn)

    def _tables(self, conn: Connection, dims: int) -> list[str]:
        """The vec0 tables a deletion must reach: every one, since a collection being re-embedded
        may hold rows of two embedders (of different dimensions) for a while; `dims`'s first."""
        if self.backend != "sqlite-vec":
            return []
        tables = self.index_tables(conn)
        first = _index_table(dims)
        return sorted(tables, key=lambda t: t != first)

    @staticmethod
    def _has_table(conn: Connection, dims: int) -> bool:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_index_table(dims),))
        return row.fetchone() is not None

    @staticmethod
    def index_tables(conn: Connection) -> list[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'vec_index_d%' "
            "AND sql LIKE 'CREATE VIRTUAL TABLE%'"
        ).fetchall()
        return sorted(r[0] for r in rows)

    # -- keeping the sqlite-vec index in step -----------------------------------------------
    def in_step(self, conn: Connection) -> bool:
        return _meta_int(conn, "vectors_generation") == _meta_int(conn, "vec_index_generation")

    def rebuild_index(self, conn: Connection) -> int:
        """Drop and refill the vec0 tables from `vectors` (caller holds a write transaction)."""
        for table in self.index_tables(conn):
            conn.execute(f"DROP TABLE {table}")
        count = 0
        cursor = conn.execute("SELECT chunk_rowid, collection, embedding FROM vectors ORDER BY chunk_rowid")
        while batch := cursor.fetchmany(1000):
            by_dims: dict[int, list[tuple[int, str, bytes]]] = {}
            for rid, collection, blob in batch:
                by_dims.setdefault(len(blob) // 4, []).append((rid, collection, blob))
            for dims, rows in by_dims.items():
                table = self._ensure_table(conn, dims)
                conn.executemany(f"INSERT INTO {table}(chunk_rowid, collection, embedding) VALUES (?, ?, ?)", rows)
                count += len(rows)
        generation = _meta_int(conn, "vectors_generation")
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('vec_index_generation', ?)", (str(generation),))
        log.info("vector index rebuilt", extra={"vectors": count})
        return count

    def index_problems(self, conn: Connection) -> list[str]:
        """Differences between `vectors` and the vec0 tables (sqlite-vec backend only)."""
        if self.backend != "sqlite-vec":
            return []
        if not self.in_step(conn):
            return ["the sqlite-vec index is behind the stored vectors (it is rebuilt on the next open)"]
        problems = []
        for table in self.index_tables(conn):
            dims = int(table.removeprefix("vec_index_d"))
            indexed = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            stored = conn.execute("SELECT count(*) FROM vectors WHERE length(embedding) = ?", (dims * 4,)).fetchone()[0]
            if indexed != stored:
                problems.append(f"{table} holds {indexed} vectors, the vectors table {stored}")
        return problems

    # -- search (caller holds a read snapshot) ----------------------------------------------
    def search(
        self, conn: Connection, collection: str, revision: int, query: np.ndarray, n: int
    ) -> list[tuple[int, float]]:
        """The `n` chunk rowids of `collection` nearest to `query` (unit length), with cosine similarity."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        if self.backend == "sqlite-vec":
            table = _index_table(query.shape[0])
            if not self._has_table(conn, query.shape[0]):
                return []
            rows = conn.execute(
                f"SELECT chunk_rowid, distance FROM {table} WHERE embedding MATCH ? AND k = ? AND collection = ?",
                (query.tobytes(), min(n, _MAX_K), collection),
            ).fetchall()
            return [(int(rid), 1.0 - float(dist)) for rid, dist in rows if dist == dist]  # drop NaN (zero vectors)
        rowids, matrix = self._matrix(conn, collection, revision, query.shape[0])
        if not len(rowids):
            return []
        sims = matrix @ query
        n = min(n, len(rowids))
        top = np.argpartition(-sims, n - 1)[:n]
        top = top[np.lexsort((rowids[top], -sims[top]))]
        return [(int(rowids[i]), float(sims[i])) for i in top]

    def _matrix(self, conn: Connection, collection: str, revision: int, dims: int) -> tuple[np.ndarray, np.ndarray]:
        key = (collection, revision)
        with self._matrix_lock:
            hit = self._matrices.get(key)
            if hit is not None:
                self._matrices.move_to_end(key)
                return hit
        rows = conn.execute(
            "SELECT chunk_rowid, embedding FROM vectors WHERE collection = ? AND length(embedding) = ? "
            "ORDER BY chunk_rowid",
            (collection, dims * 4),
        ).fetchall()
        rowids = np.array([r[0] for r in rows], dtype=np.int64)
        matrix = (
            np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dims)
            if rows
            else np.zeros((0, dims), dtype=np.float32)
        )
        with self._matrix_lock:
            for stale in [k for k in self._matrices if k[0] == collection]:
                del self._matrices[stale]
            self._matrices[key] = (rowids, matrix)
            while len(self._matrices) > _MATRIX_CACHE_COLLECTIONS:
                self._matrices.popitem(last=False)
        return rowids, matrix
