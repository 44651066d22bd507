"""`edgefleet knowledge ingest | retrieve | collections`: one node's knowledge store over gRPC.

(`edgefleet fleet push-knowledge` distributes a collection to a whole group through the
orchestrator; these verbs work on one node, or on a node of `--group`.)
"""

from __future__ import annotations

import argparse
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import TextIO

from google.protobuf.json_format import MessageToDict

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

DOC_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
MAX_DOC_ID_BYTES = 512


class KnowledgeCommandError(Exception):
    """A problem the operator can fix (a missing file, no documents)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("knowledge", help="a node's knowledge collections: ingest, retrieve, list")
    ksub = k.add_subparsers(dest="knowledge_command", required=True)
    ing = ksub.add_parser(
        "ingest", help="add documents (a folder of .md/.txt/.html/.pdf, or files) to a collection; ids are their paths"
    )
    ing.add_argument("paths", nargs="+", type=Path, metavar="DIR|FILE")
    ing.add_argument("--collection", required=True)
    ing.add_argument("--version", default="", help="a version label for the collection")
    ret = ksub.add_parser("retrieve", help="the chunks of a collection that best match a query")
    ret.add_argument("query")
    ret.add_argument("--collection", required=True)
    ret.add_argument("--top-k", type=int, default=0, help="1-50 (default 5)")
    ret.add_argument("--mode", default="", choices=["", "hybrid", "keyword", "vector"])
    ret.add_argument("--json", action="store_true")
    ls = ksub.add_parser("collections", help="the node's collections: version, documents, chunks")
    ls.add_argument("--json", action="store_true")


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


def pdf_pages(path: Path) -> str:
    """A PDF's text layer, pages separated by form feeds (the store's "pages" format); an error when it has none."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise KnowledgeCommandError("reading PDF needs pypdf (pip install pypdf)") from e
    try:
        pages = [(page.extract_text() or "").replace("\f", " ") for page in PdfReader(path).pages]
    except (PdfReadError, OSError, ValueError) as e:
        raise KnowledgeCommandError(f"{path} is not a readable PDF: {e}") from e
    if not any(p.strip() for p in pages):
        raise KnowledgeCommandError(
            f"{path} has no text layer ({len(pages)} page(s) of images, e.g. a scan): run OCR on it first "
            "(e.g. ocrmypdf) or give its text as .txt/.md"
        )
    return "\f".join(pages)


def read_document(path: Path) -> tuple[str, str]:
    """(text, format) of one file: PDF pages, HTML as Markdown, Markdown, or text; UTF-8 strictly."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            return pdf_pages(path), "pages"
        raw = path.read_bytes()
    except OSError as e:
        raise KnowledgeCommandError(f"cannot read {path}: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KnowledgeCommandError(f"{path} is not UTF-8 text (byte {e.start}); convert it first") from e
    if suffix in (".html", ".htm"):
        parser = _HtmlText()
        parser.feed(text)
        parser.close()
        return parser.text(), "markdown"
    return text, "markdown" if suffix in (".md", ".markdown") else "auto"


def document_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, document id) for each file given and each document file under a folder: the id is the path
    relative to the folder (a file given alone: its name), exactly, e.g. `manuals/pump 3.pdf`."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
            found += [(p, p.relative_to(path).as_posix()) for p in files]
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise KnowledgeCommandError(f"{path} is neither a file nor a folder")
    if not found:
        raise KnowledgeCommandError(f"no .md, .txt, .html or .pdf documents in {', '.join(map(str, paths))}")
    for p, rel in found:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise KnowledgeCommandError(f"{p}: the file name is not UTF-8; rename it") from None
        if len(rel.encode("utf-8")) > MAX_DOC_ID_BYTES:
            raise KnowledgeCommandError(f"{p}: its path is over {MAX_DOC_ID_BYTES} bytes, too long for a document id")
    return found


def documents(paths: list[Path]) -> list[pb.Document]:
    """Each file (or each document file under a folder) as a Document: id its path, metadata source."""
    docs = []
    for p, rel in document_files(paths):
        text, fmt = read_document(p)
        docs.append(pb.Document(id=rel, text=text, format=fmt, metadata={"source": rel}))
    return docs


def run(stub: pb_grpc.InferenceStub, args: argparse.Namespace, out: TextIO) -> int:
    if args.knowledge_command == "ingest":
        docs = documents(args.paths)
        req = pb.IngestRequest(collection=args.collection, documents=docs, version=args.version)
        r = stub.Ingest(req, timeout=args.timeout)
        out.write(
            f"ingested {r.documents} document(s) into {args.collection}: {r.chunks} chunks, "
            f"{r.unchanged} unchanged, version {r.collection_version or '-'}\n"
        )
        return 0
    if args.knowledge_command == "retrieve":
        rr = pb.RetrieveRequest(query=args.query, collection=args.collection, top_k=args.top_k, mode=args.mode)
        resp = stub.Retrieve(rr, timeout=args.timeout)
        if args.json:
            out.write(json.dumps(MessageToDict(resp, preserving_proto_field_name=True), indent=2) + "\n")
            return 0
        for c in resp.chunks:
            text = " ".join(c.text.split())
            out.write(f"{c.score:.3f}  {c.chunk_id}  {c.heading}\n    {text[:300]}{'…' if len(text) > 300 else ''}\n")
        if not resp.chunks:
            out.write("(no matching chunks)\n")
        return 0
    lc = stub.ListCollections(pb.ListCollectionsRequest(), timeout=args.timeout)
    if args.json:
        out.write(json.dumps(MessageToDict(lc, preserving_proto_field_name=True), indent=2) + "\n")
        return 0
    out.write(f"{'COLLECTION':<24} {'VERSION':<10} {'DOCUMENTS':>9} {'CHUNKS':>7}  EMBEDDER\n")
    for c in lc.collections:
        out.write(f"{c.name:<24} {c.version or '-':<10} {c.documents:>9} {c.chunks:>7}  {c.embedder or '-'}\n")
    if not lc.collections:
        out.write("(no collections)\n")
    out.write(f"search: {lc.search_backend or 'off'}, embedder {lc.embedder or '-'}\n")
    return 0
