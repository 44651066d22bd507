"""A file handed to the orchestrator in pieces over the command channel: the CLI's and the console's one way.

Each piece is an `upload-chunk` command (base64, at most `MAX_UPLOAD_CHUNK_BYTES`), addressed by
the file's sha256 and confirmed before the next goes; the orchestrator answers how many pieces it
still misses, so a file it holds already (from an earlier upload) stops at the first piece. A
later push-adapter / push-knowledge names the file by its sha256.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

from edgefleet.proto.commands import Command, UploadChunkRequest
from edgefleet.proto.payloads import MAX_UPLOAD_CHUNK_BYTES, CommandResult, UploadChunk

SendCommand = Callable[[Command], CommandResult]
Progress = Callable[[int, int, bool], None]  # (pieces sent, pieces in all, the orchestrator has the whole file)


def piece_count(size: int, step: int = MAX_UPLOAD_CHUNK_BYTES) -> int:
    return -(-size // step)


def upload(send: SendCommand, data: bytes, progress: Progress | None = None) -> tuple[str, CommandResult]:
    """Send `data` piece by piece; (its sha256, the last answer): a refusal ends the upload at once."""
    step = MAX_UPLOAD_CHUNK_BYTES
    pieces = (data[i * step : (i + 1) * step] for i in range(piece_count(len(data), step)))
    return _send(send, hashlib.sha256(data).hexdigest(), len(data), pieces, progress)


def upload_file(send: SendCommand, path: Path, progress: Progress | None = None) -> tuple[str, CommandResult]:
    """`upload` of a file read a piece at a time (a model of hundreds of megabytes is never in memory
    whole): hashed in one pass, then sent in another."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
            size += len(block)

    def pieces() -> Iterator[bytes]:
        with path.open("rb") as f:
            while piece := f.read(MAX_UPLOAD_CHUNK_BYTES):
                yield piece

    return _send(send, digest.hexdigest(), size, pieces(), progress)


def _send(
    send: SendCommand, sha: str, size: int, pieces: Iterator[bytes], progress: Progress | None
) -> tuple[str, CommandResult]:
    step = MAX_UPLOAD_CHUNK_BYTES
    count = piece_count(size, step)
    result = CommandResult(ok=True)
    for i, data in enumerate(pieces):
        piece = UploadChunk(
            sha256=sha,
            size=size,
            chunk_bytes=step,
            index=i,
            data=base64.b64encode(data).decode(),
        )
        result = send(Command(UploadChunkRequest(upload=piece)))
        if not result.ok:
            break
        done = result.data.get("missing") == 0  # the orchestrator has the whole file (perhaps from before)
        if progress is not None:
            progress(i + 1, count, done)
        if done:
            break
    return sha, result
