"""`edgefleet knowledge ingest | retrieve | collections`: one node's knowledge store over gRPC.

(`edgefleet fleet push-knowledge` distributes a collection to a whole group through the
orchestrator; these verbs work on one node, or on a node of `--group`.)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import TextIO

from google.protobuf.json_format import MessageToDict

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

DOC_SUFFIXES = (".md", ".markdown", ".txt")


class KnowledgeCommandError(Exception):
    """A problem the operator can fix (a missing file, no documents)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("knowledge", help="a node's knowledge collections: ingest, retrieve, list")
    ksub = k.add_subparsers(dest="knowledge_command", required=True)
    ing = ksub.add_parser("ingest", help="add documents (a folder of .md/.txt, or files) to a collection")
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


def _doc_id(rel: str, i: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", rel.rsplit(".", 1)[0]).strip("-.")[:128] or f"doc-{i}"


def documents(paths: list[Path]) -> list[pb.Document]:
    """Each file (or each .md/.txt under a folder) as a Document: id from its path, metadata source."""
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
        raise KnowledgeCommandError(f"no .md or .txt documents in {', '.join(map(str, paths))}")
    docs = []
    for i, (p, rel) in enumerate(found, start=1):
        try:
            data = p.read_bytes()
        except OSError as e:
            raise KnowledgeCommandError(f"cannot read {p}: {e.strerror}") from e
        docs.append(pb.Document(id=_doc_id(rel, i), data=data, metadata={"source": rel}))
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
