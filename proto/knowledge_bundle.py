"""The knowledge bundle format: how a collection's documents travel as one artifact.

A bundle is gzip'd UTF-8 JSON lines, one document per line:
`{"id": "<doc id>", "text": "<text>", "metadata": {"<name>": "<string>", …}}` (`text` and
`metadata` may be left out; blank lines are skipped). An optional `"format"` ("markdown", "text",
"pages": form-feed separated pages of a PDF) is written only when set, so older bundles read the same.
Document ids are paths or names as users have them (`manuals/pump 3.pdf`), kept exactly.
The CLI writes bundles, the orchestrator checks an upload is one, and a node reads one to install the collection.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SUFFIX = ".jsonl.gz"
MAX_BUNDLE_DOCUMENTS = 100_000
# Decompressed sizes, counted while reading (a 1 MB gzip can hold gigabytes of zeros): the whole
# bundle (a node holds a collection's documents in memory to install it: far more text than a
# device's manuals), and one line (one document's JSON: a 1 MiB document escaped \uXXXX is 6 MiB).
MAX_BUNDLE_BYTES = 256 * 1024**2
MAX_BUNDLE_LINE_BYTES = 16 * 1024**2


class BundleError(ValueError):
    """Not a knowledge bundle, or a line that is wrong; the message names the line."""


@dataclass(frozen=True)
class BundleDocument:
    id: str
    text: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    format: str = ""
    """"" (auto), "markdown", "text" or "pages"."""


def write_bundle(docs: Iterable[BundleDocument]) -> bytes:
    """The bundle's bytes; the same documents give the same bytes (sorted keys, no gzip timestamp)."""
    lines = [
        json.dumps(
            {"id": d.id, "text": d.text, "metadata": dict(d.metadata), **({"format": d.format} if d.format else {})},
            sort_keys=True,
        )
        + "\n"
        for d in docs
    ]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write("".join(lines).encode("utf-8"))
    return buf.getvalue()


def _document(n: int, line: str) -> BundleDocument:
    try:
        item = json.loads(line)
    except ValueError as e:
        raise BundleError(f"knowledge bundle line {n} is not JSON: {e}") from e
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise BundleError(f"knowledge bundle line {n}: an object with a string id is needed")
    text = item.get("text", "")
    if not isinstance(text, str):
        raise BundleError(f"knowledge bundle line {n}: text must be a string")
    meta = item.get("metadata", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BundleError(f"knowledge bundle line {n}: metadata must map names to strings")
    fmt = item.get("format", "")
    if not isinstance(fmt, str):
        raise BundleError(f"knowledge bundle line {n}: format must be a string")
    return BundleDocument(item["id"], text, meta, fmt)


def iter_bundle(source: Path | IO[bytes]) -> Iterator[BundleDocument]:
    """The documents of a bundle (a file path or a binary file object), one at a time; BundleError when wrong.

    Decompression streams: no line longer than `MAX_BUNDLE_LINE_BYTES` and no more than
    `MAX_BUNDLE_BYTES` in all are ever decompressed, whatever the gzip data claims."""
    name = source.name if isinstance(source, Path) else "upload"
    count = 0
    total = 0
    try:
        with gzip.open(source, "rb") as f:
            for n in itertools.count(1):
                raw = f.readline(MAX_BUNDLE_LINE_BYTES + 1)
                if not raw:
                    break
                total += len(raw)
                if total > MAX_BUNDLE_BYTES:
                    raise BundleError(
                        f"knowledge bundle {name} decompresses to over MAX_BUNDLE_BYTES={MAX_BUNDLE_BYTES} bytes "
                        f"(at line {n}): split the collection into smaller bundles"
                    )
                if len(raw) > MAX_BUNDLE_LINE_BYTES:
                    raise BundleError(
                        f"knowledge bundle line {n} decompresses to over MAX_BUNDLE_LINE_BYTES={MAX_BUNDLE_LINE_BYTES}"
                        " bytes: split that document"
                    )
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                count += 1
                if count > MAX_BUNDLE_DOCUMENTS:
                    raise BundleError(
                        f"knowledge bundle has more than {MAX_BUNDLE_DOCUMENTS} documents (MAX_BUNDLE_DOCUMENTS)"
                    )
                yield _document(n, line)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise BundleError(f"knowledge bundle {name} is not gzip'd UTF-8 JSON lines: {e}") from e


def read_bundle(source: Path | IO[bytes]) -> list[BundleDocument]:
    """Every document of a bundle; BundleError naming the line that is wrong."""
    return list(iter_bundle(source))
