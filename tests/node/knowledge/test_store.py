"""The knowledge store on real SQLite files: ingest, retrieve, validation, atomic swaps, crashes, damage."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgefleet.node.knowledge import (
    CorruptDatabase,
    Document,
    EmbedderMismatch,
    InvalidInput,
    KnowledgeStore,
    LlamaEmbedder,
    NotFoundError,
    WordLlamaEmbedder,
)
from edgefleet.node.knowledge.chunking import chunk_text
from edgefleet.node.knowledge.sqlite import DRIVER
from tests.conftest import wait_for

from .conftest import DOCS


def chunk_rows(path: Path, collection: str, doc_id: str) -> list[str]:
    conn = DRIVER.connect(str(path))
    try:
        rows = conn.execute(
            "SELECT text FROM chunks WHERE collection = ? AND doc_id = ? ORDER BY idx", (collection, doc_id)
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        conn.close()


# -- ingest and retrieve ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "query", "doc"),
    [
        ("keyword", "shaft seal kit", "pump-manual"),
        ("keyword", "padlock tag isolator", "lockout"),
        ("vector", "washing the condenser fins with water", "condenser-cleaning"),
        ("vector", "the phases are connected in the wrong order", "alarm-codes"),
        ("hybrid", "do the motor bearings need grease", "pump-manual"),
        ("hybrid", "flow switch opened, what now", "alarm-codes"),
    ],
)
def test_retrieve_finds_the_right_document(store: KnowledgeStore, mode: str, query: str, doc: str) -> None:
    hits = store.retrieve(query, "manual", 3, mode)  # type: ignore[arg-type]
    assert hits and hits[0].doc_id == doc
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hits_carry_citable_ids_headings_and_metadata(store: KnowledgeStore) -> None:
    hit = store.retrieve("mechanical seal weeps", "manual", 1, "keyword")[0]
    assert hit.chunk_id == "manual/pump-manual#1"
    assert hit.heading == "Glycol pump > Mechanical seal"
    assert hit.metadata == {"title": "Glycol pump", "kind": "manual"}
    assert "SP-114" in hit.text and not hit.text.startswith("Glycol pump")
    assert store.get_chunk(hit.chunk_id).text == hit.text
    with pytest.raises(NotFoundError):
        store.get_chunk("manual/pump-manual#99")
    with pytest.raises(InvalidInput):
        store.get_chunk("not a chunk id")


def test_list_collections_and_info(store: KnowledgeStore, embedder: WordLlamaEmbedder) -> None:
    [info] = store.list_collections()
    assert (info.name, info.version, info.documents) == ("manual", "v1", 4)
    assert info.chunks == 6 and info.embedder == embedder.identity == "wordllama:l2_supercat:256"
    assert info.dimensions == 256
    assert store.collection_info("manual") == info
    assert store.search_backend == "sqlite-vec"
    assert store.integrity_check() == "ok"


def test_unknown_collection(store: KnowledgeStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        store.retrieve("seal", "nope", 5)
    with pytest.raises(NotFoundError):
        store.collection_info("nope")
    with pytest.raises(NotFoundError):
        store.delete_documents("nope", ["a"])


@pytest.mark.parametrize("top_k", [0, 51, -3])
def test_top_k_bounds(store: KnowledgeStore, top_k: int) -> None:
    with pytest.raises(InvalidInput, match="top_k"):
        store.retrieve("seal", "manual", top_k)


def test_top_k_limits_accepted(store: KnowledgeStore) -> None:
    assert len(store.retrieve("seal", "manual", 1)) == 1
    assert len(store.retrieve("seal", "manual", 50, "vector")) == 6  # every chunk, no more


def test_empty_query(store: KnowledgeStore) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        store.retrieve("  ", "manual", 5)


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (Document("empty", ""), "empty"),
        (Document("blank", " \n\n\t "), "empty"),
        (Document("headings", "# Title\n\n## Only headings\n"), "no text"),
        (Document("bad-utf8", b"caf\xc3\x28 au lait"), "not valid UTF-8"),
        (Document("surrogate", "half a pair \ud800"), "surrogate"),
        (Document("nul", "binary\x00file"), "NUL"),
        (Document("big", "x" * 2001), "limit is 2000 bytes"),
        (Document("big-bytes", b"y" * 2001), "limit is 2000 bytes"),
        (Document("line\nbreak", "text"), "document id"),
        (Document("tab\there", "text"), "document id"),
        (Document("nul\x00id", "text"), "document id"),
        (Document("half \ud800", "text"), "document id"),
        (Document("   ", "text"), "document id"),
        (Document("", "text"), "document id"),
        (Document("x" * 513, "text"), "document id"),
        (Document("é" * 257, "text"), "document id"),
        (Document("meta", "text", {"k": 1}), "metadata"),  # type: ignore[dict-item]
        (Document("fmt", "text", {}, "pdf"), "format"),  # type: ignore[arg-type]
    ],
)
def test_bad_documents_are_rejected_and_nothing_is_written(
    tmp_path: Path, embedder: WordLlamaEmbedder, doc: Document, message: str
) -> None:
    with KnowledgeStore(tmp_path / "k.sqlite", embedder, max_document_bytes=2000) as s:
        with pytest.raises(InvalidInput, match=message):
            s.ingest("manual", [DOCS[0], doc])
        assert s.list_collections() == []


def test_good_bytes_and_long_ids_are_accepted(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    with KnowledgeStore(tmp_path / "k.sqlite", embedder) as s:
        doc_id = "d" * 128
        s.ingest("m", [Document(doc_id, "Käse und Brötchen".encode())])
        assert s.retrieve("Käse", "m", 1, "keyword")[0].doc_id == doc_id


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65, "-lead", "a..b", "spa ce"])
def test_bad_collection_names(store: KnowledgeStore, name: str) -> None:
    with pytest.raises(InvalidInput, match="collection name"):
        store.ingest(name, DOCS[:1])
    with pytest.raises(InvalidInput, match="collection name"):
        store.retrieve("seal", name, 5)


def test_duplicate_ids_in_a_batch(store: KnowledgeStore) -> None:
    with pytest.raises(InvalidInput, match="twice"):
        store.ingest("manual", [Document("a", "one"), Document("a", "two")])


# -- replacing and deleting ---------------------------------------------------------------------
def test_reingest_replaces_a_document_and_skips_unchanged(store: KnowledgeStore) -> None:
    before = store.collection_info("manual")
    result = store.ingest("manual", [DOCS[1], Document("pump-manual", "The pump is now maintenance free.")])
    assert (result.documents, result.unchanged, result.chunks) == (1, 1, 1)
    after = store.collection_info("manual")
    assert after.chunks == before.chunks - 1 and after.documents == 4 and after.revision > before.revision
    assert store.retrieve("mechanical seal SP-114", "manual", 5, "keyword") == []
    assert store.retrieve("maintenance free", "manual", 1, "keyword")[0].chunk_id == "manual/pump-manual#0"
    assert store.integrity_check() == "ok"


def test_delete_documents(store: KnowledgeStore) -> None:
    assert store.delete_documents("manual", ["pump-manual", "no-such-doc"]) == 1
    assert store.collection_info("manual").documents == 3
    assert all(h.doc_id != "pump-manual" for h in store.retrieve("seal bearings", "manual", 10, "hybrid"))
    with pytest.raises(InvalidInput):
        store.delete_documents("manual", "pump-manual")
    store.delete_collection("manual")
    assert store.list_collections() == []
    assert store.integrity_check() == "ok"


# -- installing a collection atomically ---------------------------------------------------------
def test_install_collection_swaps_versions(store: KnowledgeStore) -> None:
    new_docs = [Document("faq", "# FAQ\n\n## Noise\n\nA rattling fan usually has a loose guard.")]
    with pytest.raises(InvalidInput, match="empty"):
        store.install_collection("manual", "v2", [*new_docs, Document("bad", "")])
    info = store.collection_info("manual")
    assert (info.version, info.documents) == ("v1", 4)  # the failed install changed nothing
    assert store.retrieve("shaft seal", "manual", 1, "keyword")[0].doc_id == "pump-manual"

    result = store.install_collection("manual", "v2", new_docs)
    assert (result.documents, result.chunks) == (1, 1)
    info = store.collection_info("manual")
    assert (info.version, info.documents, info.chunks) == ("v2", 1, 1)
    assert [h.doc_id for h in store.retrieve("seal fan", "manual", 5, "hybrid")] == ["faq"]
    assert store.integrity_check() == "ok"


def test_readers_see_the_old_or_the_new_version_whole(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    old = [Document(f"old-{i}", f"Old procedure {i}: torque the bolts to {i} Nm.") for i in range(10)]
    new = [
        Document(f"new-{i}", "\n\n".join(f"New step {i}.{j}: check valve {j}." for j in range(60))) for i in range(40)
    ]
    store = KnowledgeStore(tmp_path / "k.sqlite", embedder)
    store.install_collection("manual", "v1", old)
    seen: set[tuple[str, int, int]] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                info = store.collection_info("manual")
                seen.add((info.version, info.documents, info.chunks))
                hits = store.retrieve("check valve torque bolts", "manual", 5, "hybrid")
                assert len({h.doc_id.split("-")[0] for h in hits}) == 1  # never a mix of versions
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    assert wait_for(lambda: ("v1", 10, 10) in seen or bool(errors), timeout=30)  # the readers are reading
    store.install_collection("manual", "v2", new)
    assert wait_for(lambda: any(v == "v2" for v, _, _ in list(seen)) or bool(errors), timeout=30)  # ...and see v2
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert seen <= {("v1", 10, 10), ("v2", 40, store.collection_info("manual").chunks)}
    assert ("v1", 10, 10) in seen
    store.close()


# -- crashes and damage -------------------------------------------------------------------------
CHILD = r"""
import sys, threading
from pathlib import Path
from edgefleet.node.knowledge import Document, KnowledgeStore, LlamaEmbedder, WordLlamaEmbedder

def make_text(v):
    return "\n\n".join(f"Paragraph {i} of version v{v}: bearing {i} on line {i % 7} was greased." for i in range(12000))

wl = WordLlamaEmbedder()
kill_in_cycle = int(sys.argv[2])
steps, stop_at = [0], [0]  # SQLite progress calls inside the write transaction; where to stop (0: never)

def progress():
    if store._db.writer.in_transaction:
        steps[0] += 1
        if steps[0] == stop_at[0]:
            print("halfway", flush=True)  # the parent kills this process now, its transaction open
            threading.Event().wait()
    return 0

store = KnowledgeStore(Path(sys.argv[1]), LlamaEmbedder(wl.embed, wl.identity, wl.dimensions, batch_size=10**6),
                       max_document_bytes=8 << 20)
store._db.writer.set_progress_handler(progress, 1000)
print("started", flush=True)
store.ingest("warm-up", [Document("big", make_text(0))])  # lets the child count a write transaction's steps
print("done", 0, steps[0], flush=True)
whole = steps[0]
for v in range(1, kill_in_cycle + 1):
    steps[0] = 0
    stop_at[0] = max(1, whole // 2) if v == kill_in_cycle else 0
    store.ingest("crash", [Document("big", make_text(v))])
    print("done", v, steps[0], flush=True)
"""


def make_text(v: int) -> str:
    return "\n\n".join(f"Paragraph {i} of version v{v}: bearing {i} on line {i % 7} was greased." for i in range(12000))


@pytest.mark.parametrize("kill_in_cycle", [1, 2])
def test_sigkill_mid_ingest_leaves_the_document_whole_or_absent(
    tmp_path: Path, embedder: WordLlamaEmbedder, kill_in_cycle: int
) -> None:
    path = tmp_path / "k.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(kill_in_cycle)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    last_done, halfway = -1, False  # cycle 0 ingests another collection, to count a write transaction
    try:
        assert proc.stdout.readline().strip() == "started"
        for line in proc.stdout:  # the child stops itself halfway through the kill cycle's transaction
            if line.strip() == "halfway":
                os.kill(proc.pid, signal.SIGKILL)
                halfway = True
                break
            last_done = int(line.split()[1])
    finally:
        proc.kill()
        proc.wait()
    assert halfway and last_done == kill_in_cycle - 1, (halfway, last_done)
    with KnowledgeStore(path, embedder) as store:
        assert store.integrity_check() == "ok"
        texts = chunk_rows(path, "crash", "big")
        versions = {int(v) for v in re.findall(r"version v(\d+)", "\n".join(texts))}
        if kill_in_cycle == 1:  # killed inside the first ingest: nothing of it is left
            assert texts == []
            assert "crash" not in [c.name for c in store.list_collections()]  # nor its collection row
            return
        assert versions == {last_done}  # the last finished version, whole: none of the killed one
        assert len(texts) == len(chunk_text(make_text(last_done)))
        assert store.collection_info("crash").chunks == len(texts)


def test_garbage_header_raises_corrupt_database(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    path = tmp_path / "k.sqlite"
    KnowledgeStore(path, embedder).close()
    with path.open("r+b") as f:
        f.write(os.urandom(100))
    with pytest.raises(CorruptDatabase, match="edgefleet-node rebuild-db"):
        KnowledgeStore(path, embedder)


def test_garbage_pages_raise_corrupt_database_and_rebuild_starts_fresh(
    tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    path = tmp_path / "k.sqlite"
    with KnowledgeStore(path, embedder) as s:
        s.ingest("manual", [Document(f"d{i}", f"Document {i} about pumps and seals. " * 40) for i in range(30)])
    size = path.stat().st_size
    assert size > 40 * 4096
    with path.open("r+b") as f:
        f.seek(4096 * 2)
        f.write(os.urandom(size - 4096 * 4))
    with pytest.raises(CorruptDatabase, match="rebuild-db"):
        KnowledgeStore(path, embedder)
    moved = KnowledgeStore.rebuild(path)
    assert moved.exists() and moved.name.startswith("k.sqlite.corrupt-")
    with KnowledgeStore(path, embedder) as s:
        assert s.list_collections() == [] and s.integrity_check() == "ok"


# -- vector backends and embedders --------------------------------------------------------------
def test_numpy_backend_agrees_with_sqlite_vec(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    path = tmp_path / "k.sqlite"
    queries = ["clean the coil fins", "swap two phases", "seal leaks glycol", "padlock before work"]
    with KnowledgeStore(path, embedder, vector_backend="sqlite-vec") as vec:
        vec.ingest("manual", DOCS)
        expected = {qu: [h.chunk_id for h in vec.retrieve(qu, "manual", 3, "vector")] for qu in queries}
        scores = {qu: vec.retrieve(qu, "manual", 1, "vector")[0].score for qu in queries}
    with KnowledgeStore(path, embedder, vector_backend="numpy") as np_store:
        assert np_store.search_backend == "numpy"
        for qu in queries:
            hits = np_store.retrieve(qu, "manual", 3, "vector")
            assert [h.chunk_id for h in hits] == expected[qu]
            assert hits[0].score == pytest.approx(scores[qu], abs=1e-5)
        # a write while sqlite-vec is not loaded ...
        np_store.ingest("manual", [Document("extra", "Refrigerant recovery needs a certified machine.")])
        assert np_store.integrity_check() == "ok"
    # ... leaves the sqlite-vec index behind; the next sqlite-vec open rebuilds it
    with KnowledgeStore(path, embedder, vector_backend="auto") as vec:
        assert vec.search_backend == "sqlite-vec" and vec.integrity_check() == "ok"
        assert vec.retrieve("certified refrigerant recovery machine", "manual", 1, "vector")[0].doc_id == "extra"


def test_other_embedder_needs_reembed(
    tmp_path: Path, embedder: WordLlamaEmbedder, other_embedder: LlamaEmbedder
) -> None:
    """Without the old embedder at hand: vector search refuses, hybrid ranks by keywords until re-embedded."""
    path = tmp_path / "k.sqlite"
    with KnowledgeStore(path, embedder) as s:
        s.ingest("manual", DOCS)
    with KnowledgeStore(path, other_embedder) as s:
        assert s.retrieve("padlock", "manual", 1, "keyword")[0].doc_id == "lockout"  # keyword still works
        with pytest.raises(EmbedderMismatch, match="re-embed"):
            s.retrieve("padlock", "manual", 1, "vector")
        assert s.retrieve("padlock", "manual", 1, "hybrid")[0].doc_id == "lockout"  # keyword ranking meanwhile
        s.ingest("manual", [Document("x", "more text about the refrigerant recovery machine")])
        assert s.collection_info("manual").embedder == embedder.identity  # still the old space until the switch
        assert s.delete_documents("manual", ["condenser-cleaning", "x"]) == 2
        assert s.collection_info("manual").embedder == embedder.identity  # deleting does not relabel vectors
        assert s.ensure_embedder() == ["manual"]
        assert s.ensure_embedder() == []
        assert s.collection_info("manual").embedder == "test:wordllama-reversed:256"
        assert s.retrieve("padlock and tag before work", "manual", 1, "vector")[0].doc_id == "lockout"
        assert s.integrity_check() == "ok"


def test_gguf_embedder_on_the_node_model(tmp_path: Path) -> None:
    from edgefleet.node.model_catalog import resolve_model

    model = resolve_model(None, tmp_path)
    embedder = LlamaEmbedder.from_gguf(model.path, n_threads=2, sha256=model.sha256)
    assert embedder.identity == f"llama:{model.sha256[:12]}:mean" and embedder.dimensions == 576
    with KnowledgeStore(tmp_path / "k.sqlite", embedder) as s:
        s.ingest("manual", DOCS[:2])
        hits = s.retrieve("condenser coil cleaning", "manual", 2, "hybrid")
        assert {h.doc_id for h in hits} <= {"pump-manual", "condenser-cleaning"} and hits
        assert s.collection_info("manual").embedder == embedder.identity


def test_concurrent_reads_and_writes(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    store = KnowledgeStore(tmp_path / "k.sqlite", embedder)
    store.ingest("manual", DOCS)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(40):
                assert store.retrieve("seal", "manual", 3, "hybrid")
        except BaseException as e:
            errors.append(e)

    def writer() -> None:
        try:
            for i in range(20):
                store.ingest("manual", [Document(f"note-{i}", f"Note {i}: the seal was checked.")])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.collection_info("manual").documents == 24
    assert store.integrity_check() == "ok"
    store.close()
