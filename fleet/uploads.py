"""A file handed to the orchestrator in pieces over the command channel: the CLI's and the console's one way.

Each piece is an `upload-chunk` command (base64, at most `MAX_UPLOAD_CHUNK_BYTES`), addressed by
the file's sha256; the orchestrator answers how many pieces it still misses. The first piece goes
alone, so a file it holds already (from an earlier upload) or a refusal stops there; then up to
`UPLOAD_WINDOW` pieces are in flight at once (the orchestrator takes the next while the answer to
one travels back), each answer matched to its piece. A piece whose answer does not come (timed out,
link down) or says the orchestrator is unavailable is sent again, up to `PIECE_TRIES` times; the
first refusal ends the upload (the pieces still in flight are waited for, not followed up). A later
push-adapter / push-knowledge / push-model names the file by its sha256.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from edgefleet.fleet.control import OperatorKeyError, OrchestratorUnreachable
from edgefleet.proto.commands import Command, UploadChunkRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import MAX_UPLOAD_CHUNK_BYTES, CommandResult, UploadChunk

log = logging.getLogger("edgefleet.fleet.uploads")

UPLOAD_WINDOW = 8  # pieces in flight at once (8 pieces of 128 KiB: enough to keep the orchestrator's worker busy)
PIECE_TRIES = 3  # sends of one piece whose answer did not come or said "unavailable", before the upload fails

SendCommand = Callable[[Command], CommandResult]
Progress = Callable[[int, int, bool], None]  # (pieces sent, pieces in all, the orchestrator has the whole file)


def piece_count(size: int, step: int = MAX_UPLOAD_CHUNK_BYTES) -> int:
    return -(-size // step)


def upload(
    send: SendCommand, data: bytes, progress: Progress | None = None, window: int = UPLOAD_WINDOW
) -> tuple[str, CommandResult]:
    """Send `data` piece by piece; (its sha256, the last answer): a refusal ends the upload at once."""
    step = MAX_UPLOAD_CHUNK_BYTES
    pieces = (data[i * step : (i + 1) * step] for i in range(piece_count(len(data), step)))
    return _send(send, hashlib.sha256(data).hexdigest(), len(data), pieces, progress, window)


def upload_file(
    send: SendCommand, path: Path, progress: Progress | None = None, window: int = UPLOAD_WINDOW
) -> tuple[str, CommandResult]:
    """`upload` of a file read a piece at a time (a model of hundreds of megabytes is never in memory
    whole; at most `window` pieces are): hashed in one pass, then sent in another."""
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

    return _send(send, digest.hexdigest(), size, pieces(), progress, window)


def _piece(sha: str, size: int, index: int, data: bytes) -> Command:
    chunk = UploadChunk(
        sha256=sha, size=size, chunk_bytes=MAX_UPLOAD_CHUNK_BYTES, index=index, data=base64.b64encode(data).decode()
    )
    return Command(UploadChunkRequest(upload=chunk))


def _send_piece(send: SendCommand, cmd: Command) -> CommandResult:
    """`send(cmd)`, again (a piece is idempotent) while its answer does not come or says "unavailable"."""
    index = cmd.request.upload.index if isinstance(cmd.request, UploadChunkRequest) else -1
    for attempt in range(1, PIECE_TRIES + 1):
        try:
            result = send(cmd)
        except OperatorKeyError:
            raise
        except (OrchestratorUnreachable, TimeoutError) as e:
            if attempt == PIECE_TRIES:
                raise
            log.warning("upload piece sent again", extra={"index": index, "attempt": attempt, "reason": str(e)})
            continue
        if result.ok or result.code != ErrorCode.UNAVAILABLE or attempt == PIECE_TRIES:
            return result
        log.warning("upload piece sent again", extra={"index": index, "attempt": attempt, "reason": result.message})
    raise AssertionError("unreachable")


def _send(
    send: SendCommand, sha: str, size: int, pieces: Iterator[bytes], progress: Progress | None, window: int
) -> tuple[str, CommandResult]:
    count = piece_count(size)
    source = enumerate(pieces)
    first = next(source, None)
    if first is None:
        return sha, CommandResult(ok=True)
    # the first piece alone, sent once: a file held already, a refusal (operator, site) or an orchestrator
    # that does not answer at all costs one piece and one wait
    result = send(_piece(sha, size, *first))
    done = result.ok and result.data.get("missing") == 0  # the orchestrator has the whole file (perhaps from before)
    if not result.ok:
        return sha, result
    answered = 1
    if progress is not None:
        progress(answered, count, done)
    refusal: CommandResult | None = None
    with ThreadPoolExecutor(max_workers=max(1, window), thread_name_prefix="edgefleet-upload") as pool:
        in_flight: dict[Future[CommandResult], int] = {}
        while True:
            while not done and refusal is None and len(in_flight) < max(1, window):
                nxt = next(source, None)
                if nxt is None:
                    break
                in_flight[pool.submit(_send_piece, send, _piece(sha, size, *nxt))] = nxt[0]
            if not in_flight:
                break
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=in_flight.__getitem__):
                del in_flight[future]
                if refusal is not None or done:
                    continue  # in flight when the upload ended: its answer (or its failure) changes nothing
                answer = future.result()  # a piece that got no answer after PIECE_TRIES sends raises here
                if not answer.ok:
                    refusal = answer
                    continue
                answered += 1
                result = answer
                done = answer.data.get("missing") == 0
                if progress is not None:
                    progress(answered, count, done)
    return sha, refusal or result
