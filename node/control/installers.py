"""How each kind of artifact goes into service on a node (see artifact_sync.Installer).

Adapters: checked against the base model, loaded with llama.cpp while the node serves.
Knowledge: a gzip'd JSON-lines bundle of documents ({"id", "text", "metadata"}), installed as a
new version of its collection in one swap (the old version answers until the new one is whole).
"""

from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path
from typing import Literal

from edgefleet.node.adapter_manager import AdapterManager
from edgefleet.node.errors import InvalidRequest
from edgefleet.node.knowledge.documents import Document
from edgefleet.node.knowledge.errors import NotFoundError
from edgefleet.node.knowledge.service import KnowledgeService
from edgefleet.proto.artifacts import Manifest

MAX_BUNDLE_DOCUMENTS = 100_000


class AdapterInstaller:
    kind: Literal["adapter"] = "adapter"
    suffix = ".gguf"

    def __init__(self, manager: AdapterManager) -> None:
        self.manager = manager

    def precheck(self, m: Manifest) -> None:
        self.manager.check_fit(m.label, m.base_architecture, m.base_tensors)

    def load(self, name: str, version: str, path: Path, sha256: str) -> None:
        self.manager.install(name, version, path, sha256)

    def unload(self, name: str) -> None:
        self.manager.remove(name)


def read_bundle(path: Path) -> list[Document]:
    """The documents of a knowledge bundle; InvalidRequest naming the line that is wrong."""
    docs = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                item = json.loads(line)
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    raise InvalidRequest(f"knowledge bundle line {n}: an object with a string id is needed")
                meta = item.get("metadata", {})
                if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                    raise InvalidRequest(f"knowledge bundle line {n}: metadata must map names to strings")
                docs.append(Document(id=item["id"], text=str(item.get("text", "")), metadata=meta))
                if len(docs) > MAX_BUNDLE_DOCUMENTS:
                    raise InvalidRequest(f"knowledge bundle has more than {MAX_BUNDLE_DOCUMENTS} documents")
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, InvalidRequest):
            raise
        raise InvalidRequest(f"knowledge bundle {path.name} is not gzip'd UTF-8 JSON lines: {e}") from e
    return docs


class KnowledgeInstaller:
    kind: Literal["knowledge"] = "knowledge"
    suffix = ".jsonl.gz"

    def __init__(self, knowledge: KnowledgeService) -> None:
        self.knowledge = knowledge

    def precheck(self, m: Manifest) -> None:
        if m.kind != "knowledge":
            raise InvalidRequest(f"{m.label} is not a knowledge collection")

    def load(self, name: str, version: str, path: Path, sha256: str) -> None:
        try:
            if self.knowledge.store.collection_info(name).version == version:
                return  # installed before this start: the store has it
        except NotFoundError:
            pass
        self.knowledge.store.install_collection(name, version, read_bundle(path))

    def unload(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.knowledge.store.delete_collection(name)
