"""A new embedder: collections are embedded again in the background while retrieval keeps answering.

One real node process, started with the `minilm` embedder on a knowledge store (real SQLite) that was
filled with wordllama vectors, as a node upgraded from one embedder to the other finds it. And the
store's own switch: documents ingested while a collection is being re-embedded are part of the switch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from edgefleet.node.knowledge import Document, KnowledgeStore, LlamaEmbedder, WordLlamaEmbedder
from edgefleet.node.knowledge.reembed import IN_LOCK_LIMIT, reembed_collection
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess, wait_for
from tests.node.knowledge.conftest import DOCS

CORPUS = Path(__file__).resolve().parents[3] / "bench" / "rag_corpus"
# (question, the document that answers it): top 1 with wordllama and with minilm, vector and hybrid.
QUESTIONS = [
    ("Do the bearings in the pump motor need greasing?", "maint-glycol-pump"),
    ("Which way should I spray water through the fins when cleaning?", "maint-condenser-cleaning"),
    ("Which terminals are used for the RS-485 bus cable?", "tc5-modbus"),
]


def corpus() -> list[Document]:
    """The documents answering QUESTIONS and the next 8 by name: 35 chunks."""
    answers = {a for _, a in QUESTIONS}
    paths = sorted((p for p in CORPUS.glob("*.md") if p.name != "README.md"), key=lambda p: (p.stem not in answers, p))
    return [Document(p.stem, p.read_text(encoding="utf-8"), {"source": p.name}, "markdown") for p in paths[:11]]


def test_new_embedder_reembeds_in_the_background_while_retrieve_answers(
    start_node: Callable[..., NodeProcess], tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    data_dir = tmp_path / "data-reembed"  # NodeProcess's data dir for node_id "reembed"
    data_dir.mkdir()
    with KnowledgeStore(data_dir / "knowledge.db", embedder) as store:
        chunks = store.install_collection("manual", "1", corpus()).chunks
    assert chunks > IN_LOCK_LIMIT  # more than the switch embeds under its lock: the background path runs

    # Each batch of 16 chunks waits 500 ms more, so the re-embedding outlasts the first questions on any machine.
    node = start_node(
        node_id="reembed",
        env={"EDGEFLEET_EMBEDDER": "minilm", "EDGEFLEET_FAILPOINTS": "knowledge.reembed.batch=sleep:500"},
    )
    assert node.info().embedder.startswith("minilm:")
    seen: list[str] = []  # the collection's embedder at each round of questions
    cols: list[pb.CollectionInfo] = []

    def a_round_of_questions() -> bool:
        """Every question answered right (whichever vectors the node has now); True once the new ones are in."""
        (col,) = node.stub.ListCollections(pb.ListCollectionsRequest(), timeout=10).collections
        cols.append(col)
        seen.append(col.embedder)
        for question, answer in QUESTIONS:
            for mode in ("hybrid", "vector"):
                r = node.stub.Retrieve(
                    pb.RetrieveRequest(query=question, collection="manual", top_k=3, mode=mode), timeout=30
                )
                assert r.chunks[0].chunk_id.startswith(f"manual/{answer}#"), (col.embedder, mode, question)
        return col.embedder.startswith("minilm:")

    assert wait_for(a_round_of_questions, timeout=120, interval=0.2), seen
    col = cols[-1]
    assert seen[0] == embedder.identity, seen  # answered from the old vectors first...
    assert seen[-1].startswith("minilm:"), seen  # ...and from the new ones once they were complete
    assert (col.chunks, col.version) == (chunks, "1")
    assert "collection re-embedded" in node.log()


def test_documents_ingested_during_reembedding_are_switched_too(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    gate, started = threading.Event(), threading.Event()

    def slow_reversed(texts: list[str]) -> list[list[float]]:  # real wordllama rows, another space
        started.set()
        gate.wait(30)
        return [[float(x) for x in row] for row in embedder.embed(texts)[:, ::-1]]

    new = LlamaEmbedder(slow_reversed, "test:wordllama-reversed:256", 256)
    path = tmp_path / "k.sqlite"
    with KnowledgeStore(path, embedder) as s:
        s.ingest("manual", DOCS)
    with KnowledgeStore(path, new, previous_embedder=lambda i: embedder if i == embedder.identity else None) as s:
        worker = threading.Thread(target=lambda: reembed_collection(s, "manual", in_lock_limit=0))
        worker.start()
        assert started.wait(30)
        # Re-embedding is under way: the old vectors answer, and new documents join the old space.
        assert s.retrieve("padlock and tag before work", "manual", 1, "vector")[0].doc_id == "lockout"
        s.ingest("manual", [Document("recovery", "Use a certified refrigerant recovery machine.")])
        assert s.retrieve("certified refrigerant recovery machine", "manual", 1, "vector")[0].doc_id == "recovery"
        assert s.collection_info("manual").embedder == embedder.identity
        gate.set()
        worker.join(30)
        assert not worker.is_alive()
        info = s.collection_info("manual")
        assert info.embedder == new.identity and s.stale_collections() == []
        assert s.retrieve("certified refrigerant recovery machine", "manual", 1, "vector")[0].doc_id == "recovery"
        assert s.retrieve("padlock and tag before work", "manual", 1, "hybrid")[0].doc_id == "lockout"
        assert s.integrity_check() == "ok"
        stored = s._db.writer.execute("SELECT DISTINCT embedder FROM vectors").fetchall()
        assert stored == [(new.identity,)]
