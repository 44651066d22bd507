"""What `artifact_sync.py` works with: how a kind of artifact is installed (`Installer`) and one
transfer in progress (`Transfer`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from edgefleet.node.control.chunk_store import ChunkStore
from edgefleet.proto.artifacts import Manifest
from edgefleet.proto.payloads import TransferProgress

Kind = Literal["adapter", "knowledge", "model"]


class Installer(Protocol):
    @property
    def kind(self) -> Kind: ...

    @property
    def suffix(self) -> str:
        """Of the installed file: ".gguf", ".jsonl.gz"."""

    def precheck(self, m: Manifest) -> None:
        """Before any byte is fetched: refuse (EdgefleetError) what cannot fit this node."""

    def load(self, name: str, version: str, path: Path, sha256: str) -> None:
        """Put a verified file into service; the previous version serves until this returns.

        `sha256` is the digest the file was verified with when it was assembled (or recorded then, for
        a file installed before this start): the file is not hashed again."""

    def unload(self, name: str) -> None: ...


@dataclass
class Transfer:
    manifest: Manifest
    scope: str  # where its manifest came from: the chunks are asked for and read there
    store: ChunkStore
    resumed_from: int
    requested: set[int] = field(default_factory=set)
    last_progress: float = field(default_factory=time.monotonic)
    subscribed: bool = False
    state: str = "fetching"
    error: str = ""
    duplicates: int = 0

    def progress(self) -> TransferProgress:
        return TransferProgress(
            kind=self.manifest.kind,
            name=self.manifest.name,
            version=self.manifest.version,
            have=len(self.store.held()),
            total=self.manifest.chunk_count,
            resumed_from=self.resumed_from,
            state=self.state,  # type: ignore[arg-type]
            error=self.error,
        )
