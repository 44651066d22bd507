"""Documents as callers hand them in, their validation, and their preparation for the store.

Everything that can be wrong with an input is found here, before the store writes anything,
and raised as `InvalidInput` with a message that says what to change.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgefleet.node.knowledge.chunking import Chunk, ChunkingConfig, Format, chunk_text
from edgefleet.node.knowledge.errors import InvalidInput
from edgefleet.plumbing.document_text import INPUT_FORMATS, DocumentTextError, InputFormat, document_text
from edgefleet.proto.input_limits import brief
from edgefleet.proto.topics import valid_name

MAX_DOC_ID_BYTES = 512
DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # a 500-page manual's text is about 1 MiB
MAX_METADATA_BYTES = 16 * 1024
MAX_VERSION_CHARS = 64
SOURCE_BYTES_FACTOR = 16
"""A PDF's or HTML page's own bytes may be this many times the text limit (fonts, images, markup);
the text taken from it is held to the limit itself."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str | bytes
    """UTF-8 text, or a file's bytes: a PDF, an HTML page, or UTF-8 text (decoded strictly)."""
    metadata: dict[str, str] = field(default_factory=dict)
    format: Format | InputFormat = "auto"
    """"markdown", "text", "auto" (markdown when the text has headings or code fences; bytes are sniffed:
    `%PDF-` a PDF, `<html` HTML), "pages": pages of plain text separated by form feeds (`\\f`), as a PDF's
    text layer, each chunk then records its page; "pdf" (bytes: their text layer as pages) or "html"
    (as Markdown). See plumbing/document_text.py, which the CLI and the console read files with too."""


@dataclass(frozen=True)
class PreparedDocument:
    id: str
    text: str
    metadata_json: str
    sha256: str
    chunker: str
    chunks: list[Chunk]


def check_collection(name: object) -> str:
    if not isinstance(name, str) or not valid_name(name):
        raise InvalidInput(
            f"collection name {brief(name)} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..' or '/'"
        )
    return name


def check_doc_id(doc_id: object) -> str:
    """A document id as users have them: a path or a name (`manuals/pump 3.pdf`, `ups.conf(5)#drivers`).

    Any UTF-8 text of 1 to 512 bytes without control characters and not only white space. The id is
    stored exactly; chunk ids escape what needs it (schema.escape_doc_id).
    """
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise InvalidInput(f"document id {brief(doc_id)} is invalid: give a non-empty name or path")
    try:
        size = len(doc_id.encode("utf-8", errors="strict"))
    except UnicodeEncodeError:
        raise InvalidInput(f"document id {brief(doc_id)} is not valid Unicode (a lone surrogate)") from None
    if size > MAX_DOC_ID_BYTES:
        raise InvalidInput(f"document id {brief(doc_id)} is {size} bytes; the limit is {MAX_DOC_ID_BYTES}")
    if any(unicodedata.category(c) == "Cc" for c in doc_id):
        raise InvalidInput(f"document id {brief(doc_id)} contains control characters (a newline, a tab, NUL)")
    return doc_id


def check_version(version: object) -> str:
    if not isinstance(version, str) or not version.strip() or len(version) > MAX_VERSION_CHARS:
        raise InvalidInput(
            f"version {brief(version)} is invalid: give a non-empty string of at most {MAX_VERSION_CHARS} characters"
        )
    if any(ord(c) < 32 for c in version):
        raise InvalidInput(f"version {brief(version)} contains control characters")
    return version


def document_input(doc_id: str, data: object, fmt: str, max_bytes: int) -> tuple[str, Format]:
    """(text, store format) of a document as given: PDF bytes as pages, HTML as Markdown, UTF-8 text as is."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, str | bytes):
        raise InvalidInput(f"document {brief(doc_id)}: text must be str or bytes, got {type(data).__name__}")
    try:
        got = document_text(
            data,
            fmt,
            name=f"document {brief(doc_id)}",
            max_text_bytes=max_bytes,
            max_source_bytes=SOURCE_BYTES_FACTOR * max_bytes,
        )
    except DocumentTextError as e:
        raise InvalidInput(str(e)) from None
    return decode_text(doc_id, got.text, max_bytes), got.format


def decode_text(doc_id: str, text: object, max_bytes: int) -> str:
    """The document text as str: bytes decoded strictly as UTF-8; size, NUL and emptiness checked."""
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
        if len(raw) > max_bytes:
            raise InvalidInput(
                f"document {brief(doc_id)} is {len(raw)} bytes; the limit is {max_bytes} bytes: split it"
            )
        try:
            decoded = raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise InvalidInput(
                f"document {brief(doc_id)} is not valid UTF-8 (byte {e.start}: {brief(raw[e.start : e.start + 4])}); "
                f"convert it to UTF-8 first"
            ) from None
    elif isinstance(text, str):
        try:
            size = len(text.encode("utf-8", errors="strict"))
        except UnicodeEncodeError as e:
            raise InvalidInput(
                f"document {brief(doc_id)} contains a lone surrogate at character {e.start}; "
                "it cannot be stored as UTF-8"
            ) from None
        if size > max_bytes:
            raise InvalidInput(f"document {brief(doc_id)} is {size} bytes; the limit is {max_bytes} bytes: split it")
        decoded = text
    else:
        raise InvalidInput(f"document {brief(doc_id)}: text must be str or bytes, got {type(text).__name__}")
    if decoded.startswith("\ufeff"):
        decoded = decoded[1:]
    if "\x00" in decoded:
        raise InvalidInput(f"document {brief(doc_id)} contains NUL characters; is it a binary file?")
    if not decoded.strip():
        raise InvalidInput(f"document {brief(doc_id)} is empty")
    return decoded


def check_metadata(doc_id: str, metadata: object) -> str:
    """Metadata as canonical JSON; it must map str to str."""
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"document {brief(doc_id)}: metadata must be a mapping of strings to strings")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidInput(
                f"document {brief(doc_id)}: metadata {brief(k)} = {brief(v)} is not a string-to-string pair"
            )
    try:
        out = json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        size = len(out.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"document {brief(doc_id)}: metadata is not valid Unicode") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(f"document {brief(doc_id)}: metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}")
    return out


def chunker_signature(config: ChunkingConfig) -> str:
    counter = getattr(config.token_count, "__qualname__", type(config.token_count).__name__)
    return f"md1:{config.max_tokens}:{config.overlap_tokens}:{counter}"


def prepare_documents(
    docs: Sequence[Document], max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, chunking: ChunkingConfig | None = None
) -> list[PreparedDocument]:
    """Validate and chunk a batch; raises InvalidInput for the first bad document, before any write."""
    if isinstance(docs, Document) or not isinstance(docs, Sequence):
        raise InvalidInput("documents must be given as a list of Document")
    if not docs:
        raise InvalidInput("no documents given")
    config = chunking or ChunkingConfig()
    signature = chunker_signature(config)
    seen: set[str] = set()
    out: list[PreparedDocument] = []
    for doc in docs:
        if not isinstance(doc, Document):
            raise InvalidInput(f"expected Document, got {type(doc).__name__}")
        doc_id = check_doc_id(doc.id)
        if doc_id in seen:
            raise InvalidInput(f"document id {brief(doc_id)} appears twice in one batch")
        seen.add(doc_id)
        if doc.format not in INPUT_FORMATS:
            raise InvalidInput(
                f"document {brief(doc_id)}: format {brief(doc.format)} is not one of {', '.join(INPUT_FORMATS)}"
            )
        metadata_json = check_metadata(doc_id, doc.metadata)
        text, fmt = document_input(doc_id, doc.text, doc.format, max_bytes)
        chunks = chunk_text(text, fmt, config)
        if not chunks:
            raise InvalidInput(f"document {brief(doc_id)} has no text to index (only headings or blank lines)")
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        chunker = signature + (":pages" if fmt == "pages" else "")
        out.append(PreparedDocument(doc_id, text, metadata_json, sha, chunker, chunks))
    return out
