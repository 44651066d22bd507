"""How each kind of artifact goes into service on a node (see artifact_sync.Installer).

Adapters: checked against the base model, loaded with llama.cpp while the node serves.
Knowledge: a bundle of documents (edgefleet.proto.knowledge_bundle), installed as a new version
of its collection in one swap (the old version answers until the new one is whole).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

from edgefleet.node.adapter_manager import AdapterManager
from edgefleet.node.errors import InvalidRequest
from edgefleet.node.knowledge.documents import Document
from edgefleet.node.knowledge.errors import NotFoundError
from edgefleet.node.knowledge.service import KnowledgeService
from edgefleet.proto import knowledge_bundle
from edgefleet.proto.artifacts import Manifest


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
    """The documents of a knowledge bundle (see edgefleet.proto.knowledge_bundle); InvalidRequest naming the line."""
    try:
        return [
            Document(id=d.id, text=d.text, metadata=dict(d.metadata), format=d.format or "auto")  # type: ignore[arg-type]
            for d in knowledge_bundle.iter_bundle(path)
        ]
    except knowledge_bundle.BundleError as e:
        raise InvalidRequest(str(e)) from e


class KnowledgeInstaller:
    kind: Literal["knowledge"] = "knowledge"
    suffix = knowledge_bundle.SUFFIX

    def __init__(self, knowledge: KnowledgeService) -> None:
        self.knowledge = knowledge

    def precheck(self, m: Manifest) -> None:
        if m.kind != "knowledge":
            raise InvalidRequest(f"{m.label} is not a knowledge collection")

    def load(self, name: str, version: str, path: Path, sha256: str) -> None:
        try:
            if self.knowledge.store.collection_info(name).bundle_version == version:
                return  # installed from this bundle before this start: the store has it
        except NotFoundError:
            pass
        self.knowledge.store.install_collection(name, version, read_bundle(path))

    def unload(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.knowledge.store.delete_collection(name)
