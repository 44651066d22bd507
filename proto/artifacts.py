"""Signed artifact manifests: the contract for moving large files (adapters, knowledge, models) over MQTT.

The orchestrator stores a file by sha256 and publishes a manifest signed with the site's Ed25519
key; nodes pin the site's public key and refuse a manifest that is unsigned, signed by another
key, or altered. Bytes travel in numbered chunks; each chunk's sha256 is in the manifest, so a
tampered or misplaced chunk is refused on arrival and a transfer resumes from the chunks held.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.proto.topics import check_name
from edgefleet.proto.versions import Version

DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_ARTIFACT_BYTES = 2 * 1024**3


class ArtifactError(ValueError):
    """A manifest or chunk that cannot be accepted; the message says why."""


class Manifest(BaseModel):
    """What a file is, in how many chunks, and (for adapters) which base model it fits."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1
    kind: Literal["adapter", "knowledge", "model"]
    name: str
    version: Version
    size: Annotated[int, Field(gt=0, le=MAX_ARTIFACT_BYTES)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    chunk_bytes: Annotated[int, Field(ge=1024, le=4 * 1024 * 1024)]
    chunk_sha256: list[str]
    base_architecture: str = ""
    base_tensors: dict[str, list[int]] = Field(default_factory=dict)  # tensor → shape it fits
    # models: what a node needs to check its memory budget before it downloads a byte
    model_architecture: str = ""  # GGUF general.architecture ("qwen2", "llama", …)
    kv_bytes_per_token: Annotated[int, Field(ge=0)] = 0  # f16 K and V of one token in every layer
    signature: str = ""  # base64 Ed25519 over the canonical manifest without this field

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("artifact", v)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sha256)

    def canonical(self) -> bytes:
        """The signed bytes: the manifest as JSON without its signature, keys in a fixed order."""
        return self.model_copy(update={"signature": ""}).model_dump_json().encode()

    def check_chunk(self, index: int, data: bytes) -> None:
        if not 0 <= index < self.chunk_count:
            raise ArtifactError(f"{self.label}: chunk {index} is out of range (0..{self.chunk_count - 1})")
        expected = self.chunk_bytes if index < self.chunk_count - 1 else self.size - self.chunk_bytes * index
        if len(data) != expected:
            raise ArtifactError(f"{self.label}: chunk {index} is {len(data)} bytes, expected {expected}")
        if hashlib.sha256(data).hexdigest() != self.chunk_sha256[index]:
            raise ArtifactError(f"{self.label}: chunk {index} does not match its sha256 (tampered or corrupt)")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}@{self.version}"


def build_manifest(
    path: Path,
    kind: Literal["adapter", "knowledge", "model"],
    name: str,
    version: str,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    **extra: object,
) -> Manifest:
    """The unsigned manifest of the file at `path`, read one chunk at a time (a model of hundreds of
    megabytes is never in memory whole)."""
    whole = hashlib.sha256()
    chunk_sha256: list[str] = []
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            whole.update(chunk)
            chunk_sha256.append(hashlib.sha256(chunk).hexdigest())
            size += len(chunk)
    return Manifest(
        kind=kind,
        name=name,
        version=version,
        size=size,
        sha256=whole.hexdigest(),
        chunk_bytes=chunk_bytes,
        chunk_sha256=chunk_sha256,
        **extra,  # type: ignore[arg-type]
    )


class SiteKey:
    """The site's Ed25519 signing key (orchestrator side)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private

    @classmethod
    def generate(cls) -> SiteKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SiteKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ArtifactError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, private_path: Path, public_path: Path) -> None:
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # 0600 from the first byte: never readable by others, not even between write and chmod.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode under O_CREAT
            f.write(pem)
        public_path.write_bytes(public_pem(self.private.public_key()))

    def sign(self, manifest: Manifest) -> Manifest:
        sig = self.private.sign(manifest.canonical())
        return manifest.model_copy(update={"signature": base64.b64encode(sig).decode()})


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ArtifactError(f"{path} is not an Ed25519 public key")
    return key


def verify(manifest: Manifest, site_key: Ed25519PublicKey) -> None:
    """Raise ArtifactError unless the manifest carries the pinned site key's signature."""
    if not manifest.signature:
        raise ArtifactError(f"{manifest.label}: the manifest is not signed")
    try:
        sig = base64.b64decode(manifest.signature, validate=True)
        site_key.verify(sig, manifest.canonical())
    except (InvalidSignature, ValueError) as e:
        raise ArtifactError(
            f"{manifest.label}: the signature does not verify with this site's key (altered, or signed by another key)"
        ) from e
