"""A document's text from the bytes a client has: PDF pages, HTML as Markdown, Markdown, or text.

One function for every part that takes documents (the node's `Ingest`, the CLI, the console), so
the same file gives the same text, format and pages, hence the same chunks, whoever reads it.

The kind is named (`pdf`, `html`, `markdown`, `text`, `pages`) or, for `auto`/empty, sniffed:
`%PDF-` in the first KiB is a PDF, `<html` or `<!doctype html` at the start is HTML, anything
else must be UTF-8 text. A PDF becomes its text layer, pages separated by form feeds (the
knowledge store's "pages" format, so each chunk records its page); HTML becomes Markdown-ish
text with `#` headings. Every refusal is a `DocumentTextError` whose message says what to do.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Literal

from edgefleet.proto.input_limits import brief

InputFormat = Literal["auto", "markdown", "text", "pages", "pdf", "html"]
"""What a client may name: the store's formats, or a source kind converted here."""
TextFormat = Literal["auto", "markdown", "text", "pages"]
"""What the knowledge store chunks."""
INPUT_FORMATS: tuple[str, ...] = ("auto", "markdown", "text", "pages", "pdf", "html")
SUFFIX_FORMATS: dict[str, InputFormat] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "auto",
}
PDF_MAGIC = b"%PDF-"
PDF_MAGIC_WINDOW = 1024  # the PDF header may follow a little junk (PDF 1.7, 7.5.2 note)
OCR_HINT = "run OCR on it first (e.g. `ocrmypdf in.pdf out.pdf`) or give its text as .txt/.md"


class DocumentTextError(ValueError):
    """The bytes are not a document this module can read; the message names it and says what to do."""


@dataclass(frozen=True)
class DocumentText:
    text: str
    format: TextFormat
    kind: Literal["pdf", "html", "text"]
    pages: int = 0
    """Pages of a PDF (0 for other kinds)."""


def format_for_name(name: str) -> InputFormat:
    """The format a file's suffix names (`.pdf` → pdf, `.htm(l)` → html, `.md` → markdown); else auto."""
    return SUFFIX_FORMATS.get(PurePath(name).suffix.lower(), "auto")


def sniff(data: bytes) -> Literal["pdf", "html", "text"]:
    """The kind of `data` by its first bytes: `%PDF-` → pdf, `<html`/`<!doctype html` → html, else text."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n\x00")
    # the header after a little junk counts only in a file that also ends like a PDF: a text that
    # quotes "%PDF-" near its start (a file-format spec) stays text
    if head.startswith(PDF_MAGIC) or (PDF_MAGIC in data[:PDF_MAGIC_WINDOW] and b"%%EOF" in data[-2048:]):
        return "pdf"
    head = head.lower()
    if head.startswith((b"<html", b"<!doctype html")):
        return "html"
    return "text"


def document_text(
    data: bytes | str,
    fmt: str = "auto",
    *,
    name: str = "the document",
    max_text_bytes: int | None = None,
    max_source_bytes: int | None = None,
) -> DocumentText:
    """The text to index from `data` (bytes as read from a file, or text) and `fmt` (one of INPUT_FORMATS;
    "" is auto). `max_source_bytes` caps a PDF's or HTML page's bytes, `max_text_bytes` the text
    (a PDF's extraction stops there). `name` starts every error message."""
    fmt = fmt or "auto"
    if fmt not in INPUT_FORMATS:
        raise DocumentTextError(f"{name}: format {brief(fmt)} is not one of {', '.join(INPUT_FORMATS)}")
    if isinstance(data, str):
        if fmt == "pdf":
            raise DocumentTextError(f"{name}: format 'pdf' needs the PDF's bytes (the `data` field), not text")
        if fmt == "html" or (fmt == "auto" and sniff(data[:512].encode("utf-8", errors="replace")) == "html"):
            _check_size(name, len(data.encode("utf-8", errors="replace")), max_source_bytes, "HTML")
            return DocumentText(html_markdown(data), "markdown", "html")
        return DocumentText(data, fmt, "text")  # type: ignore[arg-type]  # the store's own formats
    sniffed = sniff(data)
    if fmt == "pdf" or (fmt == "auto" and sniffed == "pdf"):
        if sniffed != "pdf":
            raise DocumentTextError(f"{name} is not a PDF (no %PDF- header): give the PDF file itself")
        _check_size(name, len(data), max_source_bytes, "PDF")
        text, pages = pdf_pages(data, name=name, max_text_bytes=max_text_bytes)
        return DocumentText(text, "pages", "pdf", pages)
    if fmt == "html" or (fmt == "auto" and sniffed == "html"):
        _check_size(name, len(data), max_source_bytes, "HTML")
        return DocumentText(html_markdown(decode_utf8(data, name)), "markdown", "html")
    if sniffed == "pdf":  # named markdown/text/pages, yet a PDF: decoding would only say "not UTF-8"
        raise DocumentTextError(f"{name} is a PDF but its format says {fmt}: name it pdf or leave the format empty")
    _check_size(name, len(data), max_text_bytes, "text")
    return DocumentText(decode_utf8(data, name), fmt, "text")  # type: ignore[arg-type]


def _check_size(name: str, size: int, limit: int | None, what: str) -> None:
    if limit is not None and size > limit:
        raise DocumentTextError(f"{name} is {size} bytes; the limit is {limit} bytes for {what}: split it")


def decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise DocumentTextError(
            f"{name} is not valid UTF-8 (byte {e.start}: {brief(data[e.start : e.start + 4])}); "
            "convert it to UTF-8 first (a PDF or HTML file can be sent as it is)"
        ) from None


def pdf_pages(data: bytes, *, name: str = "the PDF", max_text_bytes: int | None = None) -> tuple[str, int]:
    """(text layer with pages separated by form feeds, page count); refused when encrypted, unreadable,
    without a text layer, or (with `max_text_bytes`) more text than that."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, WrongPasswordError

    encrypted = DocumentTextError(
        f"{name} is encrypted (password-protected): remove the password first (e.g. `qpdf --decrypt`)"
    )
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = bool(reader.decrypt(""))  # an owner-only password opens with the empty user password
            except Exception:  # AES without `cryptography`, a broken encryption dictionary: not opened either way
                opened = False
            if not opened:
                raise encrypted
        pages: list[str] = []
        size = 0
        for page in reader.pages:
            text = (page.extract_text() or "").replace("\f", " ").replace("\x00", "")
            text = text.encode("utf-8", errors="replace").decode("utf-8")  # no lone surrogates
            size += len(text.encode("utf-8")) + 1
            if max_text_bytes is not None and size > max_text_bytes:
                raise DocumentTextError(
                    f"{name}: the text of its first {len(pages) + 1} of {len(reader.pages)} pages is over the "
                    f"limit of {max_text_bytes} bytes: split the PDF"
                )
            pages.append(text)
    except DocumentTextError:
        raise
    except (FileNotDecryptedError, WrongPasswordError):
        raise encrypted from None
    except Exception as e:  # pypdf raises many kinds (PdfReadError, ValueError, KeyError…) for a broken file
        raise DocumentTextError(f"{name} is not a readable PDF ({type(e).__name__}: {brief(str(e), 120)})") from None
    if not any(p.strip() for p in pages):
        raise DocumentTextError(f"{name} has no text layer ({len(pages)} page(s) of images, e.g. a scan): {OCR_HINT}")
    return "\f".join(pages), len(pages)


class _HtmlText(HTMLParser):
    """HTML as Markdown-ish text: <h1>-<h6> become `#` headings, blocks become paragraphs, scripts dropped."""

    _BLOCKS = frozenset(("p", "div", "li", "tr", "br", "pre", "table", "ul", "ol", "section", "article", "dd", "dt"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_markdown(html: str) -> str:
    """HTML as Markdown-ish text (headings as `#`, blocks as paragraphs, no scripts or styles)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return parser.text()
