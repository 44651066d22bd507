"""The CLI's exit status for a failed call, from the error's ErrorCode (through proto/error_table.py).

A script can tell "try again later" (the node is busy, draining or unreachable for now: 75, like
sysexits' EX_TEMPFAIL) and "not allowed" (a key or identity refused: 77, EX_NOPERM) from a request
that failed for good (1) without reading the message.
"""

from __future__ import annotations

import grpc

from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import row

EXIT_FAILED = 1
EXIT_TRY_LATER = 75
EXIT_NOT_ALLOWED = 77
_BY_HTTP_STATUS = {401: EXIT_NOT_ALLOWED, 403: EXIT_NOT_ALLOWED, 429: EXIT_TRY_LATER, 503: EXIT_TRY_LATER,
                   504: EXIT_TRY_LATER}  # fmt: skip


def exit_code(code: ErrorCode | None) -> int:
    """The exit status for an error with `code` (None: no code, the call itself failed)."""
    if code is None:
        return EXIT_FAILED
    return _BY_HTTP_STATUS.get(row(code).http, EXIT_FAILED)


def describe_rpc_error(error: grpc.RpcError, address: str) -> tuple[str, int]:
    """(the line to print, the exit status) for a failed gRPC call to a node or the front door."""
    code = sent_code(error)
    status = error.code() if isinstance(error, grpc.Call) else None
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code is None and status == grpc.StatusCode.UNAVAILABLE:  # grpc's own: no server answered
        return f"cannot reach a node at {address}: is edgefleet-node running there? ({details})", EXIT_FAILED
    if code == ErrorCode.DRAINING:
        return f"the node at {address} is draining for shutdown: ask another node ({details})", exit_code(code)
    shown = code.value if code is not None else name.lower()
    return f"{shown} ({name}): {details}", exit_code(code)
