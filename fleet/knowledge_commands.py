"""`edgefleet knowledge ingest | retrieve | collections`: one node's knowledge store over gRPC.

(`edgefleet fleet push-knowledge` distributes a collection to a whole group through the
orchestrator; these verbs work on one node, or on a node of `--group`.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TextIO

from google.protobuf.json_format import MessageToDict

from edgefleet.plumbing.document_text import DocumentTextError, document_text, format_for_name
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
    ing.add_argument(
        "--root",
        type=Path,
        default=None,
        help="ids are paths relative to this folder (default: a folder's files relative to it; a file: as given)",
    )
    ret = ksub.add_parser("retrieve", help="the chunks of a collection that best match a query")
    ret.add_argument("query")
    ret.add_argument("--collection", required=True)
    ret.add_argument("--top-k", type=int, default=0, help="1-50 (default 5)")
    ret.add_argument("--mode", default="", choices=["", "hybrid", "keyword", "vector"])
    ret.add_argument("--json", action="store_true")
    ls = ksub.add_parser("collections", help="the node's collections: version, documents, chunks")
    ls.add_argument("--json", action="store_true")


def read_document(path: Path) -> tuple[str, str]:
    """(text, format) of one file, read the node's way (plumbing/document_text.py): PDF pages, HTML as
    Markdown, Markdown, or UTF-8 text; the suffix names the kind, else the first bytes do."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KnowledgeCommandError(f"cannot read {path}: {e.strerror}") from e
    try:
        got = document_text(raw, format_for_name(path.name), name=str(path))
    except DocumentTextError as e:
        raise KnowledgeCommandError(str(e)) from None
    return got.text, got.format


def _under(path: Path, base: Path) -> str | None:
    """`path` relative to `base` (both made absolute), in POSIX form; None when it is not under it."""
    try:
        return path.absolute().relative_to(base.absolute()).as_posix()
    except ValueError:
        return None


def document_id(path: Path, base: Path | None = None) -> str:
    """The id of a file: its path relative to `base` when given; else the path as the user gave it
    (`manuals/pump 3.pdf` stays that; `./` dropped; an absolute path under the working folder from there)."""
    if base is not None:
        rel = _under(path, base)
        if rel is None:
            raise KnowledgeCommandError(f"{path} is not under {base} (--root)")
        return rel
    if path.is_absolute():
        return _under(path, Path.cwd()) or path.as_posix()
    return Path(os.path.normpath(path)).as_posix()


def document_files(paths: list[Path], root: Path | None = None) -> list[tuple[Path, str]]:
    """(file, document id) for each file given and each document file under a folder. The id is the path
    relative to `root` when given; else, under a folder, the path relative to that folder, and for a file
    given alone, the path as given (see document_id), exactly, e.g. `manuals/pump 3.pdf`."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
            found += [(p, document_id(p, root or path)) for p in files]
        elif path.is_file():
            found.append((path, document_id(path, root)))
        else:
            raise KnowledgeCommandError(f"{path} is neither a file nor a folder")
    if not found:
        raise KnowledgeCommandError(f"no .md, .txt, .html or .pdf documents in {', '.join(map(str, paths))}")
    seen: dict[str, Path] = {}
    for p, rel in found:
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise KnowledgeCommandError(f"{p}: the file name is not UTF-8; rename it") from None
        if len(rel.encode("utf-8")) > MAX_DOC_ID_BYTES:
            raise KnowledgeCommandError(f"{p}: its path is over {MAX_DOC_ID_BYTES} bytes, too long for a document id")
        if rel in seen and seen[rel] != p:
            raise KnowledgeCommandError(f"{seen[rel]} and {p} would both be document {rel!r}: give one, or use --root")
        seen[rel] = p
    return list(dict.fromkeys(found))


def documents(paths: list[Path], root: Path | None = None) -> list[pb.Document]:
    """Each file (or each document file under a folder) as a Document: id its path, metadata source."""
    docs = []
    for p, rel in document_files(paths, root):
        text, fmt = read_document(p)
        docs.append(pb.Document(id=rel, text=text, format=fmt, metadata={"source": rel}))
    return docs


def run(stub: pb_grpc.InferenceStub, args: argparse.Namespace, out: TextIO) -> int:
    if args.knowledge_command == "ingest":
        docs = documents(args.paths, args.root)
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
