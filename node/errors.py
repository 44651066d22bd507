"""Typed errors of the node. Each class carries its ErrorCode (`code`); every edge sends that code
and takes the rest from proto/error_table.py: gRPC status (api/status.py), MQTT `code` (`code_of`)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from edgefleet.proto.error_codes import ErrorCode


class EdgefleetError(Exception):
    """Base of every error the node raises on purpose; the message is shown to the caller."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL


class InvalidRequest(EdgefleetError):
    """The request is malformed or out of range."""

    code = ErrorCode.INVALID_REQUEST


class ContextOverflow(InvalidRequest):
    """The prompt (plus room for one token) does not fit the slot's context."""

    code = ErrorCode.CONTEXT_OVERFLOW


class NotFound(EdgefleetError):
    """A named thing (adapter, template, …) does not exist on this node."""

    code = ErrorCode.NOT_FOUND


class PermissionDenied(EdgefleetError):
    """The caller may not do this here (a read-only collection, a missing grant)."""

    code = ErrorCode.PERMISSION_DENIED


class QueueFull(EdgefleetError):
    """Every slot is busy and the waiting queue is at its limit."""

    code = ErrorCode.QUEUE_FULL


class Unavailable(EdgefleetError):
    """The node cannot take work now: shedding load for heat, or not ready."""

    code = ErrorCode.UNAVAILABLE


class Draining(Unavailable):
    """The node is draining for shutdown: the request should go to another node."""

    code = ErrorCode.DRAINING


class ProfileError(EdgefleetError):
    """A firmware profile is missing, malformed or does not fit the device."""


class ModelError(EdgefleetError):
    """The model file cannot be found or loaded."""


class OverBudget(EdgefleetError):
    """The memory estimate exceeds the profile's budget."""

    code = ErrorCode.OVER_BUDGET


class EngineFailure(EdgefleetError):
    """llama.cpp reported an error while decoding."""

    code = ErrorCode.ENGINE_FAILURE


class StorageFull(EdgefleetError):
    """A node store cannot grow: its disk is full (SQLITE_FULL, ENOSPC).

    The message names the store and the free space; the write changed nothing and may be tried
    again once room is back.
    """

    code = ErrorCode.STORAGE_FULL

    def __init__(self, store: str, path: Path, cause: BaseException | None = None) -> None:
        free, total = disk_space(path)
        super().__init__(
            f"the {store} ({path}) cannot grow: the disk is full ({_size(free)} free of {_size(total)} in "
            f"{_existing(path)}); delete documents or files there, or give the node a larger disk"
        )
        self.store, self.path, self.free_bytes, self.cause = store, path, free, cause


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system holding `path` (or its nearest existing parent)."""
    try:
        usage = shutil.disk_usage(_existing(path))
    except OSError:
        return 0, 0
    return usage.free, usage.total


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def is_disk_full(error: BaseException) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full") or an OSError ENOSPC/EDQUOT."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == SQLITE_FULL
    return type(error).__name__ == "OperationalError" and "disk is full" in str(error)


SQLITE_FULL = 13


@contextmanager
def disk_full_as(store: str, path: Path) -> Iterator[None]:
    """Raise StorageFull (naming `store` and the free space) for a full disk inside the block."""
    try:
        yield
    except StorageFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise StorageFull(store, path, e) from e
        raise


def code_of(error: BaseException) -> ErrorCode:
    """The ErrorCode of a node error (INTERNAL for anything not raised on purpose)."""
    return error.code if isinstance(error, EdgefleetError) else ErrorCode.INTERNAL


TRANSIENT = (QueueFull, Unavailable)  # worth trying again later (the message stays in the inbox)
