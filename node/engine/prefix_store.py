"""Prompt prefixes read once: the KV cells of fixed prefixes kept on disk across restarts.

A fixed prefix is the part of a prompt that does not change from request to request: the chat
preamble, a template's or a sensor rule's system prompt and the head of its text (the service
finds it, `GenerationRequest.prefix_len`). The engine saves one sequence's KV cells once its
prefill reaches the end of such a prefix, and restores them into a free slot at startup or on
first use after a restart, so the scheduler sees a cached prefix and prefills only the rest.

One file per entry, `<key digest>.kv`:

    MAGIC (8 bytes) | header length (4 bytes, little endian) | header (JSON) | state bytes

The header names what the cells were computed with: the model's sha256, the adapter (name,
version, sha256, scale; "" for the base model), the KV cache type (f16, q8_0, …), the exact
prefix token ids, and the state's size and sha256. An entry is used only when every one of them
matches the request and the bytes hash to the header's sha256; otherwise it is dropped, with a
log line. A changed template has other token ids, so it simply misses; the files it leaves are
the least recently used and go first once the store is over its byte limit.

Thread use: the engine thread looks up and restores, a writer thread saves; the index is locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("edgefleet.prefix_store")

MAGIC = b"EFPXKV01"
SUFFIX = ".kv"
MAX_HEADER_BYTES = 4 * 1024 * 1024  # a header names at most a context's worth of token ids


class StaleEntry(Exception):
    """An entry that must not be used: other model, adapter, KV type or tokens, or damaged bytes."""


@dataclass(frozen=True)
class PrefixKey:
    """What a prefix's KV cells depend on; the file name is its digest."""

    model_sha256: str
    adapter: str  # "" for the base model, else name@version#sha256*scale
    kv_type: str
    tokens: tuple[int, ...]

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.model_sha256}\0{self.adapter}\0{self.kv_type}\0".encode())
        h.update(struct.pack(f"<{len(self.tokens)}i", *self.tokens))
        return h.hexdigest()


def encode(key: PrefixKey, state: bytes, source: str = "") -> bytes:
    header = json.dumps(
        {
            "model_sha256": key.model_sha256,
            "adapter": key.adapter,
            "kv_type": key.kv_type,
            "tokens": list(key.tokens),
            "state_size": len(state),
            "state_sha256": hashlib.sha256(state).hexdigest(),
            "saved_at": time.time(),
            "source": source,  # template:name@version, or "" (chat preamble, system prompt of a request)
        },
        separators=(",", ":"),
    ).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + state


def read_header(blob: bytes) -> tuple[dict[str, Any], int]:
    """The header of an entry and where its state begins; StaleEntry when it is not an entry."""
    if len(blob) < len(MAGIC) + 4 or blob[: len(MAGIC)] != MAGIC:
        raise StaleEntry("not a prefix KV file (bad magic)")
    (n,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    if n > MAX_HEADER_BYTES or start + n > len(blob):
        raise StaleEntry("header is cut short")
    try:
        header = json.loads(blob[start : start + n])
    except ValueError as e:
        raise StaleEntry(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise StaleEntry("header is not an object")
    return header, start + n


def check_identity(header: dict[str, Any], model_sha256: str, kv_type: str) -> None:
    """StaleEntry unless the entry was made for this model and KV cache type."""
    if header.get("model_sha256") != model_sha256:
        raise StaleEntry(f"made for model {str(header.get('model_sha256'))[:12]}, not {model_sha256[:12]}")
    if header.get("kv_type") != kv_type:
        raise StaleEntry(f"made with KV type {header.get('kv_type')!r}, not {kv_type!r}")


def decode(blob: bytes, key: PrefixKey) -> bytes:
    """The state bytes of an entry, verified against `key`; StaleEntry on any mismatch."""
    header, start = read_header(blob)
    check_identity(header, key.model_sha256, key.kv_type)
    if header.get("adapter") != key.adapter:
        raise StaleEntry(f"made with adapter {header.get('adapter')!r}, not {key.adapter!r}")
    if header.get("tokens") != list(key.tokens):
        raise StaleEntry("made for other prefix tokens (the template changed)")
    state = blob[start:]
    if len(state) != header.get("state_size"):
        raise StaleEntry(f"state is {len(state)} bytes, the header says {header.get('state_size')}")
    if hashlib.sha256(state).hexdigest() != header.get("state_sha256"):
        raise StaleEntry("state bytes do not match their checksum (damaged file)")
    return state


@dataclass
class _Entry:
    path: Path
    size: int
    used: float  # last use, for least-recently-used eviction
    adapter: str
    tokens: tuple[int, ...]
    source: str = ""


class PrefixStore:
    """The entries of one model and KV type in `directory`, at most `max_bytes` in all."""

    def __init__(self, directory: Path, max_bytes: int, model_sha256: str, kv_type: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.model_sha256 = model_sha256
        self.kv_type = kv_type
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self._scan()

    def key(self, tokens: list[int] | tuple[int, ...], adapter: str = "") -> PrefixKey:
        return PrefixKey(self.model_sha256, adapter, self.kv_type, tuple(tokens))

    def _scan(self) -> None:
        """Index the entries on disk; drop those of another model or KV type, and damaged ones."""
        for path in self.directory.glob(f"*{SUFFIX}.tmp"):
            path.unlink(missing_ok=True)  # a save cut off by a crash
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                with path.open("rb") as f:
                    head = f.read(len(MAGIC) + 4)
                    if len(head) == len(MAGIC) + 4 and head[: len(MAGIC)] == MAGIC:
                        (n,) = struct.unpack_from("<I", head, len(MAGIC))
                        head += f.read(min(n, MAX_HEADER_BYTES))
                header, _ = read_header(head)
                check_identity(header, self.model_sha256, self.kv_type)
                tokens = tuple(int(t) for t in header["tokens"])
                st = path.stat()
            except (OSError, StaleEntry, KeyError, TypeError, ValueError) as e:
                self._drop_file(path, str(e))
                continue
            adapter, source = str(header.get("adapter", "")), str(header.get("source", ""))
            self._entries[path.stem] = _Entry(path, st.st_size, st.st_mtime, adapter, tokens, source)
        self._evict()
        log.info(
            "prefix store opened",
            extra={"directory": str(self.directory), "entries": len(self._entries), "bytes": self.total_bytes()},
        )

    def _drop_file(self, path: Path, reason: str) -> None:
        log.warning("prefix store entry dropped", extra={"file": path.name, "reason": reason})
        path.unlink(missing_ok=True)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def recent(self, adapter: str = "") -> list[tuple[int, ...]]:
        """Token ids of the entries made with `adapter`, most recently used first."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: -e.used)
        return [e.tokens for e in entries if e.adapter == adapter]

    def has(self, key: PrefixKey) -> bool:
        with self._lock:
            return key.digest() in self._entries

    def load(self, key: PrefixKey) -> bytes | None:
        """The verified state bytes saved for `key`, or None (absent, or stale and now dropped)."""
        digest = key.digest()
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None:
            return None
        try:
            state = decode(entry.path.read_bytes(), key)
        except (OSError, StaleEntry) as e:
            self.forget(key, str(e))
            return None
        now = time.time()
        entry.used = now
        with contextlib.suppress(OSError):
            os.utime(entry.path, (now, now))
        return state

    def forget(self, key: PrefixKey, reason: str) -> None:
        """Drop an entry (stale, or llama.cpp refused its state)."""
        with self._lock:
            entry = self._entries.pop(key.digest(), None)
        if entry is not None:
            self._drop_file(entry.path, reason)

    def save(self, key: PrefixKey, state: bytes, source: str = "") -> bool:
        """Write an entry (atomically: a reader sees the old file or the new), then evict to the limit."""
        blob = encode(key, state, source)
        if len(blob) > self.max_bytes:
            log.info("prefix larger than the prefix store", extra={"bytes": len(blob), "limit": self.max_bytes})
            return False
        digest = key.digest()
        path = self.directory / f"{digest}{SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log.warning("prefix KV not saved", extra={"file": path.name, "error": str(e)})
            return False
        with self._lock:
            self._entries[digest] = _Entry(path, len(blob), time.time(), key.adapter, key.tokens, source)
        self._evict()
        log.info("prefix KV saved", extra={"file": path.name, "tokens": len(key.tokens), "bytes": len(blob)})
        return True

    def _evict(self) -> None:
        with self._lock:
            total = sum(e.size for e in self._entries.values())
            victims = []
            for digest, entry in sorted(self._entries.items(), key=lambda kv: kv[1].used):
                if total <= self.max_bytes:
                    break
                victims.append(self._entries.pop(digest))
                total -= entry.size
        for entry in victims:
            log.info("prefix store entry evicted", extra={"file": entry.path.name, "bytes": entry.size})
            entry.path.unlink(missing_ok=True)

    def retain_templates(self, current: set[str]) -> int:
        """Drop the entries made for a template (source `template:name@version`) not in `current`:
        the template changed (another version) or is gone. Other entries stay."""
        with self._lock:
            gone = [
                self._entries.pop(d)
                for d, e in list(self._entries.items())
                if e.source.startswith("template:") and e.source.removeprefix("template:") not in current
            ]
        for entry in gone:
            self._drop_file(entry.path, f"{entry.source} is no longer a current template")
        return len(gone)
