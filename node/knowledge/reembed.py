"""Re-embedding a collection for a new embedder, in the background, while retrieval keeps serving.

A collection names the embedder its vectors came from (`collections.embedder`). When the node
starts with another embedder, `ReembedWorker` embeds each such collection again on a background
thread, in small batches and with no lock held, from one snapshot of its chunk texts. Meanwhile
the collection keeps answering from its old vectors: the store embeds queries (and documents
ingested in the meantime) with the old embedder, which it rebuilds from the identity when it
can (`embedders.embedder_for_identity`); when it cannot, hybrid retrieval falls back to keyword
ranking for that collection until the switch. The switch is one transaction under the store's
write lock: chunks added or changed since the snapshot are embedded there, the old vectors are
replaced by the new ones and the collection is relabelled, so a reader sees either the old space
or the new one, whole. A crash before the switch leaves the old vectors; the next start begins again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.node.knowledge import queries as q
from edgefleet.plumbing import failpoints

if TYPE_CHECKING:
    from edgefleet.node.knowledge.store import KnowledgeStore

log = logging.getLogger("edgefleet.node.knowledge")

BATCH = 16
"""Chunks per embedding call: small, so a query that needs the same model waits little."""
IN_LOCK_LIMIT = 32
"""At most this many chunks (added since the snapshot) are embedded while the write lock is held."""
_PASSES = 5


def reembed_collection(
    store: KnowledgeStore, collection: str, stop: threading.Event | None = None, in_lock_limit: int = IN_LOCK_LIMIT
) -> int | None:
    """Embed `collection` again with `store.embedder` and switch it over; returns the chunks embedded.

    None when it did not happen: stopped, or the collection was deleted meanwhile. 0 when the
    collection already uses the store's embedder (installed anew in the meantime, say).
    """
    embedder = store.embedder
    done: dict[int, tuple[str, np.ndarray]] = {}
    started = time.monotonic()
    for _ in range(_PASSES):
        with store._db.read() as conn:
            info = q.collection_info(conn, collection)
            rows = q.chunk_texts(conn, collection) if info is not None else []
        if info is None:
            return None
        if info.embedder == embedder.identity:
            return 0
        todo = [(rid, text) for rid, text in rows if rid not in done or done[rid][0] != text]
        if len(todo) <= in_lock_limit:
            break
        for start in range(0, len(todo), BATCH):
            if stop is not None and stop.is_set():
                return None
            failpoints.hit("knowledge.reembed.batch")
            part = todo[start : start + BATCH]
            matrix = embedder.embed([text for _, text in part])
            for (rid, text), row in zip(part, matrix, strict=True):
                done[rid] = (text, row)
    with store._db.write_lock:
        writer = store._db.writer
        info = q.collection_info(writer, collection)
        if info is None:
            return None
        if info.embedder == embedder.identity:
            return 0
        rows = q.chunk_texts(writer, collection)
        todo = [(rid, text) for rid, text in rows if rid not in done or done[rid][0] != text]
        if todo:
            matrix = embedder.embed([text for _, text in todo])
            for (rid, text), row in zip(todo, matrix, strict=True):
                done[rid] = (text, row)
        vectors = (
            np.stack([done[rid][1] for rid, _ in rows])
            if rows
            else np.zeros((0, embedder.dimensions), dtype=np.float32)
        )
        with store._db.write() as conn:
            store._vectors.delete_collection(conn, collection, info.dimensions)
            store._vectors.write(conn, collection, embedder.identity, [rid for rid, _ in rows], vectors)
            q.upsert_collection(conn, collection, None, embedder.identity, embedder.dimensions)
        store._changed(collection)
    log.info(
        "collection re-embedded",
        extra={
            "collection": collection,
            "from": info.embedder,
            "to": embedder.identity,
            "chunks": len(rows),
            "seconds": round(time.monotonic() - started, 2),
        },
    )
    return len(rows)


class ReembedWorker:
    """One background thread that re-embeds every collection of another embedder, then ends."""

    def __init__(self, store: KnowledgeStore) -> None:
        self.store = store
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knowledge-reembed", daemon=True)
        self.current: str | None = None
        self.done: list[str] = []

    def start(self) -> ReembedWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for _ in range(2):  # a second look catches a collection that failed or came back meanwhile
                stale = self.store.stale_collections()
                if not stale:
                    break
                log.info("re-embedding in the background", extra={"collections": stale})
                for name in stale:
                    if self._stop.is_set():
                        return
                    self.current = name
                    try:
                        self._warn_without_old_vectors(name)
                        if reembed_collection(self.store, name, self._stop):
                            self.done.append(name)
                    except Exception:  # the old vectors keep serving; the next start tries again
                        log.exception("re-embedding failed", extra={"collection": name})
                    finally:
                        self.current = None
            if not self._stop.is_set() and not self.store.stale_collections():
                self.store.forget_previous_embedders()
        finally:
            self._idle.set()

    def _warn_without_old_vectors(self, name: str) -> None:
        info = self.store.collection_info(name)
        if self.store._embedder_for(info) is None:
            log.warning(
                "the old vectors cannot be searched meanwhile: hybrid retrieval ranks by keywords until re-embedded",
                extra={"collection": name, "from": info.embedder, "to": self.store.embedder.identity},
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the worker finished within `timeout` seconds."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
