"""ErrorCodes on gRPC, both ways: a servicer aborts with the code's status and the code in the
trailing metadata; a client reads the code back (or, for grpc's own errors that carry none, the
code its status stands for). The mapping itself is proto/error_table.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc

from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import ERROR_CODE_KEY, code_for_grpc_status, parse_code, row


def status_of(code: ErrorCode) -> grpc.StatusCode:
    return grpc.StatusCode[row(code).grpc]


def error_metadata(code: ErrorCode, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of an error: the code first, then `extra` (request id, node, retry-after)."""
    return ((ERROR_CODE_KEY, code.value), *extra)


async def abort(
    context: grpc.aio.ServicerContext, code: ErrorCode, message: str, extra: Sequence[tuple[str, str]] = ()
) -> NoReturn:
    """End the call with `code`'s status and message, the code in the trailing metadata."""
    await context.abort(status_of(code), message, trailing_metadata=error_metadata(code, *extra))
    raise AssertionError("unreachable: context.abort raises")


def sent_code(error: grpc.RpcError) -> ErrorCode | None:
    """The ErrorCode the server sent with this error, or None (grpc's own error: the transport)."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_CODE_KEY:
            return parse_code(value)
    return None


def code_of(error: grpc.RpcError) -> ErrorCode:
    """The ErrorCode of a gRPC error: the one the server sent, else the one its status stands for."""
    sent = sent_code(error)
    if sent is not None:
        return sent
    status = error.code() if hasattr(error, "code") else None
    return code_for_grpc_status(status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN")
