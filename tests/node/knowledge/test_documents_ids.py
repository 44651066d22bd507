"""Document ids as users have them (paths, names, spaces, UTF-8) and document formats (PDF, HTML, Markdown).

Real SQLite stores, real PDF files written with fpdf2 and read back with pypdf, real bundles.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fpdf import FPDF

from edgefleet.fleet.adapter_commands import AdapterCommandError, knowledge_bundle
from edgefleet.fleet.knowledge_commands import KnowledgeCommandError, documents, read_document
from edgefleet.node.knowledge import Document, KnowledgeStore
from edgefleet.node.knowledge.errors import InvalidInput
from edgefleet.node.knowledge.schema import chunk_id, escape_doc_id, parse_chunk_id
from edgefleet.proto.knowledge_bundle import BundleDocument, read_bundle, write_bundle

IDS = [
    "manuals/pump-3.pdf",
    "ups.conf(5)#drivers",
    "Wartung/Pumpe 3 – Ölwechsel.md",
    "100% sure #1.txt",
    "水泵/手册.md",
    "tab-free but spaced  twice ",
    "é" * 256,  # 512 bytes: the limit
]


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
        else:  # a page with no text layer, as a scan has
            pdf.rect(20, 20, 100, 60, style="F")
    pdf.output(str(path))
    return path


@pytest.mark.parametrize("doc_id", IDS)
def test_chunk_ids_escape_and_round_trip(doc_id: str) -> None:
    cid = chunk_id("site.kb", doc_id, 7)
    assert parse_chunk_id(cid) == ("site.kb", doc_id, 7)
    assert not any(c.isspace() for c in cid) and cid.count("#") == 1


def test_old_ids_are_written_unchanged() -> None:
    assert chunk_id("kr9", "maint-glycol-pump", 3) == "kr9/maint-glycol-pump#3"
    assert escape_doc_id("manuals/pump 3.pdf") == "manuals/pump%203.pdf"
    assert escape_doc_id("ups.conf(5)#drivers") == "ups.conf(5)%23drivers"
    with pytest.raises(InvalidInput):
        parse_chunk_id("kr9/doc")


def test_store_keeps_ids_exactly(store: KnowledgeStore) -> None:
    docs = [
        Document(d, f"Section about item {i}: the pump number {i} needs oil.", {"source": d}) for i, d in enumerate(IDS)
    ]
    store.ingest("kb", docs)
    hits = store.retrieve("pump oil", "kb", top_k=len(IDS), mode="keyword")
    assert {h.doc_id for h in hits} == set(IDS)
    for h in hits:
        assert store.get_chunk(h.chunk_id).doc_id == h.doc_id
        assert parse_chunk_id(h.chunk_id)[1] == h.doc_id
    assert store.delete_documents("kb", ["ups.conf(5)#drivers", "水泵/手册.md"]) == 2
    left = {h.doc_id for h in store.retrieve("pump oil", "kb", top_k=len(IDS), mode="keyword")}
    assert left == set(IDS) - {"ups.conf(5)#drivers", "水泵/手册.md"}


def test_pdf_pages_are_chunk_metadata(tmp_path: Path, store: KnowledgeStore) -> None:
    pdf = write_pdf(
        tmp_path / "pump-3.pdf",
        [
            "Pump 3 service manual. Contents.",
            "Installation: bolt the pump to the plinth.",
            "Seal replacement: drain the casing, then replace the mechanical seal.",
        ],
    )
    text, fmt = read_document(pdf)
    assert fmt == "pages" and text.count("\f") == 2
    store.ingest("kb", [Document("manuals/pump-3.pdf", text, {"source": "manuals/pump-3.pdf"}, "pages")])
    hit = store.retrieve("mechanical seal replacement", "kb", top_k=1)[0]
    assert hit.metadata == {"source": "manuals/pump-3.pdf", "page": "3"}
    assert hit.chunk_id == "kb/manuals/pump-3.pdf#2"
    other = store.retrieve("bolt to the plinth", "kb", top_k=1, mode="keyword")[0]
    assert other.metadata["page"] == "2"


def test_pdf_without_text_layer_is_a_clear_error(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "scan.pdf", ["", ""])
    with pytest.raises(KnowledgeCommandError, match=r"no text layer.*OCR"):
        read_document(pdf)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(KnowledgeCommandError, match="not a readable PDF"):
        read_document(tmp_path / "broken.pdf")


def test_html_becomes_headed_sections(tmp_path: Path) -> None:
    page = tmp_path / "ups.html"
    page.write_text(
        "<html><head><title>x</title><style>p{}</style></head><body><h1>UPS</h1><p>Intro &amp; scope.</p>"
        "<h2>Drivers</h2><p>Set <b>driver</b> = usbhid-ups.</p><script>alert(1)</script></body></html>",
        encoding="utf-8",
    )
    text, fmt = read_document(page)
    assert fmt == "markdown"
    assert text == "# UPS\n\nIntro & scope.\n\n## Drivers\n\nSet driver = usbhid-ups."


def test_cli_documents_use_paths_as_ids(tmp_path: Path) -> None:
    (tmp_path / "manuals").mkdir()
    write_pdf(tmp_path / "manuals" / "pump 3.pdf", ["Pump page one."])
    (tmp_path / "Ölwechsel.md").write_text("# Öl\n\nAlle 500 h wechseln.\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("plain notes\n", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    docs = {d.id: d for d in documents([tmp_path])}
    assert set(docs) == {"manuals/pump 3.pdf", "Ölwechsel.md", "notes.txt"}
    assert docs["manuals/pump 3.pdf"].format == "pages"
    assert docs["Ölwechsel.md"].metadata["source"] == "Ölwechsel.md"
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(KnowledgeCommandError, match="not valid UTF-8"):
        documents([tmp_path])


def test_bundle_carries_ids_and_pages(tmp_path: Path, store: KnowledgeStore) -> None:
    (tmp_path / "manuals").mkdir()
    write_pdf(tmp_path / "manuals" / "pump-3.pdf", ["Cover.", "Torque the impeller nut to 40 Nm."])
    (tmp_path / "ups.conf(5)#drivers.md").write_text("# Drivers\n\nusbhid-ups for USB units.\n", encoding="utf-8")
    data = knowledge_bundle(tmp_path, io.StringIO())
    assert data == knowledge_bundle(tmp_path, io.StringIO())  # deterministic
    bundle = read_bundle(io.BytesIO(data))
    assert [(d.id, d.format) for d in bundle] == [
        ("manuals/pump-3.pdf", "pages"),
        ("ups.conf(5)#drivers.md", "markdown"),
    ]
    store.install_collection("kb", "1", [Document(d.id, d.text, dict(d.metadata), d.format) for d in bundle])  # type: ignore[arg-type]
    hit = store.retrieve("impeller nut torque", "kb", top_k=1)[0]
    assert (hit.doc_id, hit.metadata["page"]) == ("manuals/pump-3.pdf", "2")
    old = read_bundle(io.BytesIO(write_bundle([BundleDocument("a", "text")])))
    assert old[0].format == ""
    write_pdf(tmp_path / "scan.pdf", [""])
    with pytest.raises(AdapterCommandError, match="no text layer"):
        knowledge_bundle(tmp_path, io.StringIO())


def test_existing_store_gains_the_page_column(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.node.knowledge import sqlite
    from edgefleet.node.knowledge.schema import MIGRATIONS

    path = tmp_path / "k.sqlite"
    conn, _ = sqlite.open_knowledge_database(path, MIGRATIONS[:1], check=False)  # a store from before the page column
    conn.close()
    with KnowledgeStore(path, embedder) as s:
        s.ingest("kb", [Document("a b.pdf", "one\ftwo", {}, "pages")])
        assert s.retrieve("two", "kb", top_k=1, mode="keyword")[0].metadata == {"page": "2"}


def test_a_file_given_alone_keeps_the_path_the_user_gave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgefleet knowledge ingest "manuals/pump 3.pdf"` stores `manuals/pump 3.pdf`, not `pump 3.pdf`."""
    (tmp_path / "manuals").mkdir()
    write_pdf(tmp_path / "manuals" / "pump 3.pdf", ["Pump page one."])
    (tmp_path / "notes.txt").write_text("plain notes\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    given = [Path("manuals/pump 3.pdf"), Path("./notes.txt")]
    assert [d.id for d in documents(given)] == ["manuals/pump 3.pdf", "notes.txt"]
    assert documents(given)[0].metadata["source"] == "manuals/pump 3.pdf"
    # an absolute path under the working folder: the path from there; a folder: paths inside it
    assert [d.id for d in documents([tmp_path / "manuals" / "pump 3.pdf"])] == ["manuals/pump 3.pdf"]
    assert [d.id for d in documents([Path("manuals")])] == ["pump 3.pdf"]
    # --root: ids from another folder, so one file re-ingested matches its folder's ingest
    assert [d.id for d in documents([Path("manuals/pump 3.pdf")], root=Path("manuals"))] == ["pump 3.pdf"]
    assert next(d.id for d in documents([tmp_path], root=tmp_path.parent)).startswith(f"{tmp_path.name}/")
