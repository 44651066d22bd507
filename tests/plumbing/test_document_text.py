"""One reading of documents for every part (plumbing/document_text.py): PDFs (real files written with
fpdf2, read with pypdf), HTML, Markdown and text, sniffed by their first bytes or named by format."""

from __future__ import annotations

from pathlib import Path

import pytest
from fpdf import FPDF

from edgefleet.plumbing.document_text import DocumentTextError, document_text, format_for_name, sniff


def pdf_bytes(pages: list[str], user_password: str | None = None) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner", user_password=user_password)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
        else:  # a page of image only, as a scan
            pdf.rect(20, 20, 100, 60, style="F")
    return bytes(pdf.output())


def test_kinds_are_sniffed_by_their_first_bytes() -> None:
    assert sniff(pdf_bytes(["x"])) == "pdf"
    assert sniff(b"\xef\xbb\xbf  <!DOCTYPE html><html>") == "html"
    assert sniff(b"\n<HTML><body>") == "html"
    assert sniff(b"# Manual\n\n<html> in a code span") == "text"
    # a text that quotes the PDF magic near its start (a file-format spec) stays text
    assert sniff(b"Magic: the string %PDF- at offset 0 means a PDF.\n") == "text"
    assert (format_for_name("manuals/Pump 3.PDF"), format_for_name("a.htm"), format_for_name("b.txt")) == (
        "pdf",
        "html",
        "auto",
    )


def test_a_pdf_becomes_its_pages_sniffed_or_named() -> None:
    data = pdf_bytes(["Cover.", "Torque the impeller nut to 40 Nm.", "Seal kit SP-114."])
    for fmt in ("auto", "", "pdf"):
        got = document_text(data, fmt, name="pump.pdf")
        assert (got.format, got.kind, got.pages) == ("pages", "pdf", 3)
        assert got.text.split("\f") == ["Cover.", "Torque the impeller nut to 40 Nm.", "Seal kit SP-114."]
    with pytest.raises(DocumentTextError, match="is a PDF but its format says markdown"):
        document_text(data, "markdown", name="pump.pdf")
    with pytest.raises(DocumentTextError, match="format 'pdf' needs the PDF's bytes"):
        document_text("Cover.", "pdf")
    with pytest.raises(DocumentTextError, match="not a PDF"):
        document_text(b"plain words", "pdf", name="x.pdf")


def test_pdfs_that_cannot_be_indexed_are_refused_saying_what_to_do() -> None:
    with pytest.raises(DocumentTextError, match=r"scan.pdf has no text layer \(2 page\(s\).*ocrmypdf"):
        document_text(pdf_bytes(["", ""]), name="scan.pdf")
    with pytest.raises(DocumentTextError, match=r"locked.pdf is encrypted.*remove the password"):
        document_text(pdf_bytes(["Secret pump data."], user_password="s3cret"), name="locked.pdf")
    # encrypted for its owner only (no user password): readable as any viewer reads it
    assert document_text(pdf_bytes(["Open pump data."], user_password=""), name="o.pdf").text == "Open pump data."
    whole = pdf_bytes(["Cover.", "Torque the impeller nut to 40 Nm."])
    with pytest.raises(DocumentTextError, match=r"cut\.pdf is not a readable PDF"):
        document_text(whole[: len(whole) // 3], name="cut.pdf")
    with pytest.raises(DocumentTextError, match="not a readable PDF"):
        document_text(b"%PDF-1.4 not really", name="broken.pdf")
    with pytest.raises(DocumentTextError, match="limit is 100 bytes for PDF"):
        document_text(whole, name="big.pdf", max_source_bytes=100)
    with pytest.raises(DocumentTextError, match=r"first 2 of 2 pages is over the limit of 20 bytes"):
        document_text(whole, name="long.pdf", max_text_bytes=20)


def test_html_markdown_and_text() -> None:
    page = (
        "<!doctype html><html><head><title>x</title><style>p{}</style></head><body><h1>UPS</h1><p>Intro &amp; "
        "scope.</p><h2>Drivers</h2><p>Set <b>driver</b> = usbhid-ups.</p><script>alert(1)</script></body></html>"
    )
    expected = "# UPS\n\nIntro & scope.\n\n## Drivers\n\nSet driver = usbhid-ups."
    for data, fmt in ((page.encode(), "auto"), (page.encode(), "html"), (page, "auto"), (page, "html")):
        got = document_text(data, fmt)
        assert (got.text, got.format, got.kind) == (expected, "markdown", "html")
    assert document_text(b"# T\n\nbody", "markdown").format == "markdown"
    assert document_text(b"plain", "").format == "auto"
    with pytest.raises(DocumentTextError, match=r"notes.txt is not valid UTF-8 \(byte 3"):
        document_text(b"caf\xe9", name="notes.txt")
    with pytest.raises(DocumentTextError, match="format 'docx' is not one of"):
        document_text(b"x", "docx")


def test_the_same_file_reads_the_same_from_a_path_or_from_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.pdf"
    path.write_bytes(pdf_bytes(["One.", "Two."]))
    assert document_text(path.read_bytes(), format_for_name(path.name)) == document_text(path.read_bytes())
