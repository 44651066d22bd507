"""Collections installed from a signed knowledge bundle are read-only to Ingest and DeleteDocuments,
on a real store (SQLite file, wordllama embeddings), through the installer that takes bundles and
through the gRPC handlers' code path (knowledge_rpc); other collections stay writable."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.node.api import knowledge_rpc
from edgefleet.node.control.installers import KnowledgeInstaller
from edgefleet.node.errors import PermissionDenied, code_of
from edgefleet.node.knowledge import Document, KnowledgeStore, WordLlamaEmbedder
from edgefleet.node.knowledge import sqlite as ksqlite
from edgefleet.node.knowledge.errors import ReadOnlyCollection
from edgefleet.node.knowledge.schema import MIGRATIONS
from edgefleet.node.knowledge.service import EmbedderChoice, KnowledgeService
from edgefleet.proto import knowledge_bundle
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import row
from edgefleet.proto.v1 import inference_pb2 as pb

from .conftest import DOCS

NOTE = Document("note-1", "The chiller on line 2 was serviced on Monday; the strainer was clean.")
READ_ONLY = "collection manuals was installed from a signed knowledge bundle (version 3)"


def test_an_installed_collection_refuses_ingest_and_delete_and_others_stay_writable(
    tmp_path: Path, embedder: WordLlamaEmbedder
) -> None:
    with KnowledgeStore(tmp_path / "k.db", embedder) as store:
        store.install_collection("manuals", "3", DOCS)
        before = store.collection_info("manuals")
        assert before.bundle_version == "3"
        with pytest.raises(ReadOnlyCollection) as e:
            store.ingest("manuals", [NOTE])
        assert READ_ONLY in str(e.value) and "pushing a new bundle" in str(e.value)
        assert code_of(e.value) is ErrorCode.PERMISSION_DENIED and row(ErrorCode.PERMISSION_DENIED).grpc == (
            "PERMISSION_DENIED"
        )
        with pytest.raises(ReadOnlyCollection, match="version 3"):
            store.delete_documents("manuals", ["lockout"])
        after = store.collection_info("manuals")
        assert (after.documents, after.revision, after.version) == (before.documents, before.revision, "3")
        assert [h.doc_id for h in store.retrieve("padlock tag isolator", "manuals", 1, "keyword")] == ["lockout"]

        assert store.ingest("notes", [NOTE]).documents == 1  # a new collection: writable
        assert store.delete_documents("notes", ["note-1"]) == 1
        assert store.collection_info("notes").bundle_version is None

        store.install_collection("manuals", "4", DOCS[:2])  # a new bundle replaces it, still read-only
        with pytest.raises(ReadOnlyCollection, match=r"\(version 4\)"):
            store.ingest("manuals", [NOTE])
        store.delete_collection("manuals")  # the bundle removed: the name is free for Ingest again
        assert store.ingest("manuals", [NOTE]).documents == 1

    with KnowledgeStore(tmp_path / "k.db", embedder) as store:  # the mark is in the file, not the process
        store.install_collection("manuals", "3", DOCS)
    with KnowledgeStore(tmp_path / "k.db", embedder) as store, pytest.raises(ReadOnlyCollection):
        store.ingest("manuals", [NOTE])


def test_collections_of_a_store_from_before_the_mark_stay_writable(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    path = tmp_path / "k.db"
    conn, _ = ksqlite.open_knowledge_database(path, MIGRATIONS[:3], check=False)  # a store from before migration 4
    conn.close()
    with KnowledgeStore(path, embedder) as store:
        store.ingest("manuals", DOCS, version="1")
        assert store.collection_info("manuals").bundle_version is None
        assert store.ingest("manuals", [NOTE]).documents == 1


@pytest.fixture
def service(tmp_path: Path) -> Iterator[KnowledgeService]:
    k = KnowledgeService(
        tmp_path / "knowledge.db",
        EmbedderChoice("wordllama"),
        node_embed=lambda texts: [],  # wordllama embeds by itself; the node's model is not asked
        n_embd=0,
        model_sha256="0" * 64,
        retrieval_cache_rows=100,
        response_cache_rows=100,
        max_document_bytes=1 << 20,
    )
    yield k
    k.close()


def test_a_bundle_installed_by_the_installer_is_read_only_over_the_grpc_handlers(
    service: KnowledgeService, tmp_path: Path
) -> None:
    bundle = tmp_path / f"manuals{knowledge_bundle.SUFFIX}"
    bundle.write_bytes(
        knowledge_bundle.write_bundle(knowledge_bundle.BundleDocument(d.id, str(d.text), d.metadata) for d in DOCS)
    )
    installer = KnowledgeInstaller(service)
    service.ingest("manuals", [NOTE], "3")  # made through Ingest with the bundle's version: not the bundle
    installer.load("manuals", "3", bundle, "")
    assert service.store.collection_info("manuals").documents == len(DOCS)  # replaced by the bundle's documents

    doc = pb.Document(id="note-2", text="Strainer checked.")
    with pytest.raises(PermissionDenied, match=re.escape(READ_ONLY)):
        asyncio.run(knowledge_rpc.ingest(service, pb.IngestRequest(collection="manuals", documents=[doc])))
    with pytest.raises(PermissionDenied, match=re.escape(READ_ONLY)):
        asyncio.run(knowledge_rpc.delete(service, pb.DeleteDocumentsRequest(collection="manuals", ids=["lockout"])))
    done = asyncio.run(knowledge_rpc.ingest(service, pb.IngestRequest(collection="notes", documents=[doc])))
    assert done.documents == 1
    installer.load("manuals", "3", bundle, "")  # the node restarted: the store has this bundle, nothing to do
    installer.unload("manuals")
    done = asyncio.run(knowledge_rpc.ingest(service, pb.IngestRequest(collection="manuals", documents=[doc])))
    assert done.documents == 1
