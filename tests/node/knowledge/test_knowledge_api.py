"""Offline knowledge through a real node's gRPC API: ingest, retrieve, answer with sources, caches.

The node is configured for a broker that is stopped before the questions: nothing but the node
answers. The corpus is the project's own (bench/rag_corpus).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import BIN, NodeProcess, collect, wait_for
from tests.mqtt_support import Mosquitto

CORPUS = Path(__file__).resolve().parents[3] / "bench" / "rag_corpus"


def docs(*names: str) -> list[pb.Document]:
    return [pb.Document(id=n, text=(CORPUS / f"{n}.md").read_text(), metadata={"source": f"{n}.md"}) for n in names]


@pytest.fixture(scope="module")
def rag_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("rag")
    broker = Mosquitto(tmp)
    env = {
        "EDGEFLEET_MQTT_URL": broker.url,
        "EDGEFLEET_SITE": "lab",
        "EDGEFLEET_RESPONSE_CACHE": "true",
        "EDGEFLEET_MAX_DOCUMENT_BYTES": "200000",
    }
    n = NodeProcess(tmp, node_id="rag", env=env)
    try:
        n.wait_serving()
        r = n.stub.Ingest(
            pb.IngestRequest(
                collection="manual",
                version="1",
                documents=docs("kr9-specifications", "maint-glycol-pump", "tc5-alarm-codes", "kr9-safety"),
            ),
            timeout=60,
        )
        assert r.documents == 4 and r.chunks >= 4
        broker.stop()  # from here on, no broker and no orchestrator
        yield n
    finally:
        n.stop()
        broker.stop()


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_node_reports_its_search_backend_and_embedder(rag_node: NodeProcess) -> None:
    info = rag_node.info()
    assert info.search_backend == "sqlite-vec" and info.embedder.startswith("wordllama:")
    cols = rag_node.stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)
    (c,) = [c for c in cols.collections if c.name == "manual"]
    assert (c.version, c.documents) == ("1", 4) and cols.search_backend == "sqlite-vec"


def test_retrieve_finds_the_answering_document(rag_node: NodeProcess) -> None:
    r = rag_node.stub.Retrieve(
        pb.RetrieveRequest(query="electrical supply voltage and running current", collection="manual", top_k=3),
        timeout=10,
    )
    hit = next(c for c in r.chunks if c.doc_id == "kr9-specifications")
    assert hit.chunk_id.startswith("manual/kr9-specifications#") and hit.metadata["source"] == "kr9-specifications.md"
    assert [c.score for c in r.chunks] == sorted((c.score for c in r.chunks), reverse=True)


def test_offline_answer_cites_chunks_and_repeats_from_the_response_cache(rag_node: NodeProcess) -> None:
    # A collection of its own: the new version below must not change the module's `manual`.
    rag_node.stub.Ingest(
        pb.IngestRequest(collection="cached", version="1", documents=docs("kr9-specifications", "maint-glycol-pump")),
        timeout=60,
    )
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="What is the maximum running current of the KR-9?")],
        retrieval=pb.Retrieval(collection="cached", top_k=3),
        max_tokens=24,
        temperature=0,
    )
    text, final, _ = collect(rag_node.stub.Generate(req, timeout=60))
    assert len(final.source_chunk_ids) == 3 and not final.cached
    assert all(c.startswith("cached/") for c in final.source_chunk_ids)
    assert any(c.startswith("cached/kr9-specifications#") for c in final.source_chunk_ids)
    again, final2, _ = collect(rag_node.stub.Generate(req, timeout=60))
    assert final2.cached and again == text and list(final2.source_chunk_ids) == list(final.source_chunk_ids)

    # a new version of the collection invalidates the cached answer
    rag_node.stub.Ingest(
        pb.IngestRequest(collection="cached", version="2", documents=docs("maint-strainer")), timeout=60
    )
    _, final3, _ = collect(rag_node.stub.Generate(req, timeout=60))
    assert not final3.cached


@pytest.mark.parametrize(
    "query", ['"unbalanced', "NEAR(pump glycol)", "pump*", "-flow", "col:umn", "(a OR b", "AND OR NOT"]
)
def test_fts5_syntax_in_a_query_is_plain_text(rag_node: NodeProcess, query: str) -> None:
    r = rag_node.stub.Retrieve(pb.RetrieveRequest(query=query, collection="manual", top_k=5), timeout=10)
    assert len(r.chunks) <= 5


def test_bad_knowledge_input_gets_its_status(rag_node: NodeProcess) -> None:
    s = rag_node.stub
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    ingest = s.Ingest
    assert (
        code_of(lambda: ingest(pb.IngestRequest(collection="m", documents=[pb.Document(id="e", text="")]))) == invalid
    )
    big = pb.Document(id="big", text="word " * 50000)
    assert code_of(lambda: ingest(pb.IngestRequest(collection="m", documents=[big]))) == invalid
    bad_utf8 = pb.Document(id="u", data=b"caf\xe9 \xff")
    assert code_of(lambda: ingest(pb.IngestRequest(collection="m", documents=[bad_utf8]))) == invalid
    bad_id = pb.Document(id="a\nb", text="hello")
    assert code_of(lambda: ingest(pb.IngestRequest(collection="m", documents=[bad_id]))) == invalid
    retrieve = s.Retrieve
    assert code_of(lambda: retrieve(pb.RetrieveRequest(query="x", collection="nope"))) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: retrieve(pb.RetrieveRequest(query="x", collection="manual", top_k=51))) == invalid
    assert code_of(lambda: retrieve(pb.RetrieveRequest(query="", collection="manual"))) == invalid
    gen = pb.GenerateRequest(prompt="hi", retrieval=pb.Retrieval(collection="nope"), max_tokens=2, temperature=0)
    assert code_of(lambda: collect(s.Generate(gen, timeout=30))) == grpc.StatusCode.NOT_FOUND
    assert rag_node.info().status  # still serving


def test_delete_documents(rag_node: NodeProcess) -> None:
    s = rag_node.stub
    s.Ingest(pb.IngestRequest(collection="scratch", documents=docs("kr9-overview")), timeout=30)
    assert s.DeleteDocuments(pb.DeleteDocumentsRequest(collection="scratch", ids=["kr9-overview"])).deleted == 1
    r = s.Retrieve(pb.RetrieveRequest(query="KR-9", collection="scratch", top_k=5), timeout=10)
    assert not r.chunks


def test_corrupt_database_is_named_at_start_and_rebuild_db_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data-broken"
    data.mkdir()
    (data / "knowledge.db").write_bytes(b"this is not a database " * 200)
    n = NodeProcess(tmp_path, node_id="broken")
    assert n.proc.wait(60) != 0
    assert "rebuild-db" in n.log()
    n.stop()
    r = subprocess.run(
        [str(BIN / "edgefleet-node"), "rebuild-db", "--data-dir", str(data)], capture_output=True, text=True
    )
    assert r.returncode == 0 and "moved" in r.stdout, r.stderr
    n = NodeProcess(tmp_path, node_id="broken")
    try:
        n.wait_serving()
        assert not n.stub.ListCollections(pb.ListCollectionsRequest(), timeout=10).collections
    finally:
        n.stop()


def test_node_killed_mid_ingest_keeps_a_whole_document_or_none(tmp_path: Path) -> None:
    # The fail point holds the ingest inside its write transaction (the collection row written, the
    # document not yet) and says so in the log: the kill lands there, not somewhere by the clock.
    n = NodeProcess(tmp_path, node_id="kill", env={"EDGEFLEET_FAILPOINTS": "knowledge.ingest.write=sleep:60000"})
    n.wait_serving()
    text = "\n\n".join(f"## Part {i}\n\n" + "The glycol pump seal needs checking. " * 30 for i in range(400))
    future = n.stub.Ingest.future(pb.IngestRequest(collection="big", documents=[pb.Document(id="doc", text=text)]))
    assert wait_for(lambda: "failpoint=knowledge.ingest.write" in n.log(), timeout=60), n.log()[-2000:]
    n.kill()
    future.cancel()
    n = n.restarted()
    try:
        n.wait_serving()
        cols = {c.name: c for c in n.stub.ListCollections(pb.ListCollectionsRequest(), timeout=10).collections}
        assert "big" not in cols, cols["big"]  # none of it: not even the collection the transaction created
        import pysqlite3.dbapi2 as sqlite3  # type: ignore[import-untyped]

        with sqlite3.connect(str(n.data_dir / "knowledge.db")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        n.stop()


def test_document_ids_and_pdf_pages_round_trip_over_grpc(rag_node: NodeProcess, tmp_path: Path) -> None:
    """Paths, names, spaces and UTF-8 as ids, through Ingest, Retrieve and DeleteDocuments; a PDF's pages."""
    from edgefleet.fleet.knowledge_commands import documents
    from tests.node.knowledge.test_documents_ids import write_pdf

    (tmp_path / "manuals").mkdir()
    write_pdf(tmp_path / "manuals" / "pump 3.pdf", ["Cover page.", "Replace the shaft seal every 8000 hours."])
    (tmp_path / "ups.conf(5)#drivers.md").write_text("# Drivers\n\nThe usbhid-ups driver.\n", encoding="utf-8")
    long_id = "Wartung/" + "ö" * 252  # 512 bytes
    docs = [*documents([tmp_path]), pb.Document(id=long_id, text="Ölwechsel alle 500 Stunden.")]
    s = rag_node.stub
    r = s.Ingest(pb.IngestRequest(collection="ids", documents=docs), timeout=60)
    assert r.documents == 3
    hit = s.Retrieve(pb.RetrieveRequest(query="shaft seal hours", collection="ids", top_k=1), timeout=30).chunks[0]
    assert (hit.doc_id, hit.chunk_id) == ("manuals/pump 3.pdf", "ids/manuals/pump%203.pdf#1")
    assert dict(hit.metadata) == {"source": "manuals/pump 3.pdf", "page": "2"}
    got = s.Retrieve(pb.RetrieveRequest(query="Ölwechsel Stunden", collection="ids", top_k=3), timeout=30).chunks
    assert long_id in {c.doc_id for c in got}
    deleted = s.DeleteDocuments(pb.DeleteDocumentsRequest(collection="ids", ids=["ups.conf(5)#drivers.md", long_id]))
    assert deleted.deleted == 2
    left = s.Retrieve(pb.RetrieveRequest(query="driver Ölwechsel seal", collection="ids", top_k=10), timeout=30)
    assert {c.doc_id for c in left.chunks} == {"manuals/pump 3.pdf"}


REAL_PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")  # Debian's shared-mime-info


def all_chunks(s: pb_grpc.InferenceStub, collection: str) -> list[tuple[str, str, str, str, dict[str, str]]]:
    """(document id, chunk number, text, heading, metadata) of what a few queries find, in the order found."""
    out = []
    for query, mode in (("magic", "keyword"), ("MIME type glob pattern", "hybrid"), ("the", "vector")):
        r = s.Retrieve(pb.RetrieveRequest(query=query, collection=collection, top_k=50, mode=mode), timeout=30)
        out += [(c.doc_id, c.chunk_id.rsplit("#", 1)[1], c.text, c.heading, dict(c.metadata)) for c in r.chunks]
    return out


def test_the_same_pdf_through_the_cli_and_as_bytes_over_grpc_gives_the_same_chunks(
    rag_node: NodeProcess, tmp_path: Path
) -> None:
    """A real PDF: `edgefleet knowledge ingest "manuals/… .pdf"` (the CLI reads it) and Ingest with the
    file's bytes as `data` (the node reads it): the same id, pages and chunks."""
    from tests.fleet.site_support import operator_env
    from tests.node.knowledge.test_documents_ids import write_pdf

    (tmp_path / "manuals").mkdir()
    pdf = tmp_path / "manuals" / "shared-mime-info spec.pdf"
    if REAL_PDF.is_file():
        pdf.write_bytes(REAL_PDF.read_bytes())
    else:  # pragma: no cover - a machine without Debian's shared-mime-info
        write_pdf(pdf, [f"Page {i}: the magic rules of MIME type {i} and their glob pattern." for i in range(17)])
    name = "manuals/shared-mime-info spec.pdf"
    argv = [str(BIN / "edgefleet"), "--node", rag_node.address, "knowledge", "ingest", name, "--collection", "via-cli"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=operator_env())
    assert r.returncode == 0 and "ingested 1 document(s) into via-cli" in r.stdout, r.stdout + r.stderr
    s = rag_node.stub
    doc = pb.Document(id=name, data=pdf.read_bytes(), metadata={"source": name})
    got = s.Ingest(pb.IngestRequest(collection="via-grpc", documents=[doc]), timeout=120)
    cols = {c.name: c for c in s.ListCollections(pb.ListCollectionsRequest(), timeout=10).collections}
    assert got.documents == 1 and got.chunks == cols["via-cli"].chunks == cols["via-grpc"].chunks > 10
    cli_chunks, grpc_chunks = all_chunks(s, "via-cli"), all_chunks(s, "via-grpc")
    assert cli_chunks == grpc_chunks and len(cli_chunks) > 50
    hit = s.Retrieve(pb.RetrieveRequest(query="magic", collection="via-grpc", top_k=1, mode="keyword"), timeout=30)
    assert hit.chunks[0].doc_id == "manuals/shared-mime-info spec.pdf"
    assert hit.chunks[0].chunk_id.startswith("via-grpc/manuals/shared-mime-info%20spec.pdf#")
    assert {c[0] for c in cli_chunks} == {name}
    assert {int(c[4]["page"]) for c in grpc_chunks} >= {1, 2, 3} and max(int(c[4]["page"]) for c in grpc_chunks) > 3
    # named rather than sniffed: the same document, so nothing changes
    doc.format = "pdf"
    again = s.Ingest(pb.IngestRequest(collection="via-grpc", documents=[doc]), timeout=120)
    assert (again.documents, again.unchanged) == (0, 1)


def test_a_pdf_the_node_cannot_read_refuses_its_batch_and_says_why(rag_node: NodeProcess, tmp_path: Path) -> None:
    """A scan (no text layer), an encrypted PDF, a cut one: the batch is refused naming the document and what to
    do, nothing of it written (as for any bad document); HTML bytes become headed Markdown."""
    from tests.plumbing.test_document_text import pdf_bytes

    s = rag_node.stub
    good = pb.Document(id="notes/ok.md", text="# Seal\n\nThe shaft seal of pump 7 weeps after a week.")
    whole = pdf_bytes(["Cover.", "Torque the impeller nut to 40 Nm."])
    for bad, words in (
        (pb.Document(id="scans/pump 7.pdf", data=pdf_bytes(["", ""])), "'scans/pump 7.pdf' has no text layer"),
        (pb.Document(id="locked.pdf", data=pdf_bytes(["Secret."], user_password="pw")), "encrypted"),
        (pb.Document(id="cut.pdf", data=whole[: len(whole) // 3], format="pdf"), "not a readable PDF"),
        (pb.Document(id="big.pdf", data=whole + b" " * 200000 * 16), "limit is 3200000 bytes for PDF"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            s.Ingest(pb.IngestRequest(collection="refused", documents=[good, bad]), timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details(), e.value.details()
    assert "OCR" in _details(s, pb.Document(id="scan.pdf", data=pdf_bytes([""])))
    assert "refused" not in {c.name for c in s.ListCollections(pb.ListCollectionsRequest(), timeout=10).collections}
    html = b"<!DOCTYPE html><html><body><h1>Pump 7</h1><h2>Seal</h2><p>Weeps for a week.</p></body></html>"
    r = s.Ingest(pb.IngestRequest(collection="refused", documents=[good, pb.Document(id="p7.html", data=html)]))
    assert (r.documents, r.unchanged) == (2, 0)
    hit = s.Retrieve(pb.RetrieveRequest(query="weeps week", collection="refused", top_k=5, mode="keyword"), timeout=30)
    assert ("Pump 7 > Seal", "Weeps for a week.") in {(c.heading, c.text) for c in hit.chunks if c.doc_id == "p7.html"}


def _details(s: pb_grpc.InferenceStub, doc: pb.Document) -> str:
    with pytest.raises(grpc.RpcError) as e:
        s.Ingest(pb.IngestRequest(collection="refused", documents=[doc]), timeout=60)
    return e.value.details() or ""
