"""Two persistent LRU caches in one SQLite file beside the knowledge database.

- `RetrievalCache`: (collection, collection version, embedder identity, query, top_k, mode) →
  the ranked chunk ids and scores a retrieval returned. The knowledge store consults it and
  skips embedding and search on a hit.
- `ResponseCache`: a caller-built key (`response_cache_key(model_sha256=…, adapter_version=…,
  template_version=…, collection_version=…, request=…)`) → a stored answer (text + metadata).

Both are bounded by row count: `get` marks the row used, `put` evicts the least recently used
rows beyond the bound. Both survive restarts and drop a collection's rows on
`invalidate_collection(name)`; keys include the collection version, so a new version never
meets an old entry even before invalidation.

The cache file is separate from the knowledge database on purpose: it runs with
`synchronous=NORMAL` (a hit's last-used update commits without an fsync; a power cut may lose
the last few cache writes, which only costs a recomputation), and a damaged cache file is moved
aside and recreated without asking anyone. A cache error never fails a request: it is logged and
reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.node.knowledge import sqlite
from edgefleet.node.knowledge.errors import CorruptDatabase, InvalidInput
from edgefleet.node.knowledge.search import RANKING_VERSION

log = logging.getLogger("edgefleet.node.knowledge")

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE retrieval_cache (
            key TEXT PRIMARY KEY, collection TEXT NOT NULL, hits TEXT NOT NULL,
            created REAL NOT NULL, last_used INTEGER NOT NULL)""",
        "CREATE INDEX retrieval_cache_lru ON retrieval_cache(last_used)",
        "CREATE INDEX retrieval_cache_collection ON retrieval_cache(collection)",
        """CREATE TABLE response_cache (
            key TEXT PRIMARY KEY, collection TEXT, text TEXT NOT NULL, metadata TEXT NOT NULL,
            created REAL NOT NULL, last_used INTEGER NOT NULL)""",
        "CREATE INDEX response_cache_lru ON response_cache(last_used)",
        "CREATE INDEX response_cache_collection ON response_cache(collection)",
    ],
]


def default_cache_path(store_path: Path) -> Path:
    """The cache file beside a knowledge database: `knowledge.sqlite` → `knowledge.cache.sqlite`."""
    return store_path.with_name(f"{store_path.stem}.cache{store_path.suffix or '.sqlite'}")


def canonical_json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(
            f"cache key parts must be plain JSON values (str, number, bool, None, list, dict): {e}"
        ) from e


def response_cache_key(**parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of `parts`.

    Pass everything that changes the answer: model_sha256, adapter_version, template_version,
    collection_version (`CollectionInfo.cache_version`), request (the full request as a dict).
    """
    if not parts:
        raise InvalidInput("response_cache_key needs at least one part")
    return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()


class _LruTable:
    """One cache table: a connection of its own to the cache file, a lock, an LRU clock."""

    def __init__(self, path: Path, table: str, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.path = Path(path)
        self.table = table
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._clock = 0
        try:
            self._conn, _ = sqlite.open_knowledge_database(
                self.path, MIGRATIONS, synchronous="NORMAL", what="cache file"
            )
        except CorruptDatabase as e:
            moved = sqlite.move_aside(self.path)
            log.warning(
                "cache file damaged, starting an empty one",
                extra={"path": str(self.path), "moved_to": str(moved), "error": str(e)},
            )
            self._conn, _ = sqlite.open_knowledge_database(
                self.path, MIGRATIONS, synchronous="NORMAL", what="cache file"
            )

    def tick(self) -> int:
        """A strictly increasing last-used stamp (wall-clock ns, so it orders across restarts too)."""
        self._clock = max(time.time_ns(), self._clock + 1)
        return self._clock

    def get(self, key: str, columns: str) -> tuple[Any, ...] | None:
        try:
            with self._lock, sqlite.transaction(self._conn):
                row = self._conn.execute(f"SELECT {columns} FROM {self.table} WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    self._conn.execute(f"UPDATE {self.table} SET last_used = ? WHERE key = ?", (self.tick(), key))
            return tuple(row) if row is not None else None
        except sqlite.DatabaseError as e:
            log.warning("cache read failed, treated as a miss", extra={"table": self.table, "error": str(e)})
            return None

    def put(self, key: str, values: Mapping[str, Any]) -> None:
        cols = ["key", *values, "created", "last_used"]
        sql = f"INSERT OR REPLACE INTO {self.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        try:
            with self._lock, sqlite.transaction(self._conn):
                self._conn.execute(sql, (key, *values.values(), time.time(), self.tick()))
                self._conn.execute(
                    f"""DELETE FROM {self.table} WHERE key IN (
                        SELECT key FROM {self.table} ORDER BY last_used ASC
                        LIMIT max(0, (SELECT count(*) FROM {self.table}) - ?))""",
                    (self.max_rows,),
                )
        except sqlite.DatabaseError as e:
            log.warning("cache write failed", extra={"table": self.table, "error": str(e)})

    def delete_where(self, where: str, params: Sequence[Any]) -> int:
        with self._lock, sqlite.transaction(self._conn):
            return int(self._conn.execute(f"DELETE FROM {self.table} WHERE {where}", tuple(params)).rowcount)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass(frozen=True)
class CachedResponse:
    text: str
    metadata: dict[str, Any]


class _Cache:
    """What both caches do with their table: invalidation by collection, size, closing."""

    def __init__(self, path: Path, table: str, max_rows: int) -> None:
        self._t = _LruTable(path, table, max_rows)

    @property
    def path(self) -> Path:
        return self._t.path

    def invalidate_collection(self, name: str) -> int:
        """Drop every entry of collection `name`; returns how many."""
        return self._t.delete_where("collection = ?", (name,))

    def clear(self) -> int:
        return self._t.delete_where("1", ())

    def __len__(self) -> int:
        return len(self._t)

    def close(self) -> None:
        self._t.close()


class RetrievalCache(_Cache):
    """Retrieval results by (collection, version, embedder, query, top_k, mode); see the module doc."""

    def __init__(self, path: Path, max_rows: int = 10_000, ranking: int = RANKING_VERSION) -> None:
        super().__init__(path, "retrieval_cache", max_rows)
        self.ranking = ranking  # the ranking's version (search.py): results of another are never returned

    def key(self, collection: str, collection_version: str, embedder: str, query: str, top_k: int, mode: str) -> str:
        parts = [collection, collection_version, embedder, query, top_k, mode, self.ranking]
        return hashlib.sha256(canonical_json(parts).encode("utf-8")).hexdigest()

    def get(
        self, collection: str, collection_version: str, embedder: str, query: str, top_k: int, mode: str
    ) -> list[tuple[str, float]] | None:
        """The cached (chunk id, score) list, best first, or None."""
        row = self._t.get(self.key(collection, collection_version, embedder, query, top_k, mode), "hits")
        if row is None:
            return None
        return [(str(cid), float(score)) for cid, score in json.loads(row[0])]

    def put(
        self,
        collection: str,
        collection_version: str,
        embedder: str,
        query: str,
        top_k: int,
        mode: str,
        hits: Sequence[tuple[str, float]],
    ) -> None:
        clean = [[cid, score if math.isfinite(score) else 0.0] for cid, score in hits]
        key = self.key(collection, collection_version, embedder, query, top_k, mode)
        self._t.put(key, {"collection": collection, "hits": json.dumps(clean)})


class ResponseCache(_Cache):
    """Generated answers by a caller-built key (`response_cache_key`); see the module doc."""

    def __init__(self, path: Path, max_rows: int = 1_000) -> None:
        super().__init__(path, "response_cache", max_rows)

    def get(self, key: str) -> CachedResponse | None:
        row = self._t.get(key, "text, metadata")
        if row is None:
            return None
        return CachedResponse(str(row[0]), json.loads(row[1]))

    def put(
        self, key: str, text: str, metadata: Mapping[str, Any] | None = None, collection: str | None = None
    ) -> None:
        """Store an answer; `collection` (if the answer used one) lets `invalidate_collection` find it."""
        meta = canonical_json(dict(metadata or {}))
        self._t.put(key, {"collection": collection, "text": text, "metadata": meta})
