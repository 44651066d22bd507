"""The one table from an `ErrorCode` to what each boundary says: gRPC status, HTTP status, OpenAI type.

Every boundary maps through it: the node's and the front door's gRPC errors (status from `grpc`,
the code itself in the `ERROR_CODE_KEY` trailing metadata), the OpenAI API's HTTP errors (status,
`error.type`; `error.code` is the code's value), the CLI's exit codes. `failover` says whether
another node may succeed where one failed with this code (the front door reads it before the
first token). gRPC statuses are named by their `grpc.StatusCode` name (proto/ does not import
grpc): `grpc.StatusCode[row.grpc]` at the edge.

An error that arrives without a code (grpc's own: connection refused, deadline, cancelled; an
HTTP framework's own 404 or 413) gets one from its status by `code_for_grpc_status` /
`code_for_http_status`: the transport's words are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.proto.error_codes import ErrorCode

ERROR_CODE_KEY = "x-edgefleet-error-code"  # gRPC trailing metadata: the ErrorCode value of the error

# OpenAI's error types (`error.type`)
INVALID_REQUEST_ERROR = "invalid_request_error"
AUTHENTICATION_ERROR = "authentication_error"
PERMISSION_ERROR = "permission_error"
RATE_LIMIT_ERROR = "rate_limit_error"
SERVER_ERROR = "server_error"


@dataclass(frozen=True)
class ErrorRow:
    grpc: str  # a grpc.StatusCode name
    http: int
    openai_type: str
    failover: bool = False  # another node may succeed where this one failed


def _bad(http: int = 400) -> ErrorRow:
    return ErrorRow("INVALID_ARGUMENT", http, INVALID_REQUEST_ERROR)


def _missing() -> ErrorRow:
    return ErrorRow("NOT_FOUND", 404, INVALID_REQUEST_ERROR)


def _conflict(grpc: str = "FAILED_PRECONDITION") -> ErrorRow:
    return ErrorRow(grpc, 409, INVALID_REQUEST_ERROR)


def _unauthenticated() -> ErrorRow:
    return ErrorRow("UNAUTHENTICATED", 401, AUTHENTICATION_ERROR)


def _server(grpc: str = "INTERNAL", http: int = 500, failover: bool = True) -> ErrorRow:
    return ErrorRow(grpc, http, SERVER_ERROR, failover)


C = ErrorCode
ERROR_TABLE: dict[ErrorCode, ErrorRow] = {
    # a request that cannot be served
    C.INVALID_REQUEST: _bad(),
    C.CONTEXT_OVERFLOW: _bad(),
    C.NOT_FOUND: _missing(),
    C.QUEUE_FULL: ErrorRow("RESOURCE_EXHAUSTED", 429, RATE_LIMIT_ERROR, failover=True),
    C.UNAVAILABLE: _server("UNAVAILABLE", 503),
    C.DRAINING: _server("UNAVAILABLE", 503),
    C.OVER_BUDGET: _server("RESOURCE_EXHAUSTED", 503),
    C.ENGINE_FAILURE: _server(),
    C.INTERNAL: _server(),
    C.STORAGE_FULL: _server("RESOURCE_EXHAUSTED", 507),
    C.DEADLINE_EXCEEDED: _server("DEADLINE_EXCEEDED", 504),
    C.CANCELLED: ErrorRow("CANCELLED", 499, INVALID_REQUEST_ERROR),
    C.NOT_IMPLEMENTED: _server("UNIMPLEMENTED", 501, failover=False),
    # the front door: API keys and routing
    C.UNAUTHENTICATED: _unauthenticated(),
    C.PERMISSION_DENIED: ErrorRow("PERMISSION_DENIED", 403, PERMISSION_ERROR),
    C.RATE_LIMITED: ErrorRow("RESOURCE_EXHAUSTED", 429, RATE_LIMIT_ERROR),
    C.NO_NODE: _missing(),
    C.ALL_BUSY: ErrorRow("RESOURCE_EXHAUSTED", 429, RATE_LIMIT_ERROR),
    # a payload refused where it entered
    C.INVALID_PAYLOAD: _bad(),
    C.WRONG_NODE: _bad(),
    C.WRONG_SITE: _bad(),
    C.WRONG_TARGET: _bad(),
    C.COMMAND_REFUSED: _conflict(),
    C.BAD_RESPONSE_TARGET: _bad(),
    C.BAD_PROPERTIES: _bad(),
    C.REPLY_FAILED: _server("UNAVAILABLE", 503),
    C.HANDLER_ERROR: _server(),
    # sensor messages
    C.PAYLOAD_TOO_LARGE: _bad(413),
    C.INVALID_UTF8: _bad(),
    C.INVALID_JSON: _bad(),
    C.MISSING_FIELD: _bad(),
    C.WRONG_TYPE: _bad(),
    C.BAD_TOPIC_LEVEL: _bad(),
    C.UNKNOWN_RULE: _missing(),
    C.INVALID_ANSWER: _server(),
    C.POISON_MESSAGE: _server(),
    # artifact transfers
    C.MANIFEST_REFUSED: _bad(),
    C.BAD_SIGNATURE: _unauthenticated(),
    C.CHUNK_REFUSED: _bad(),
    C.DUPLICATE_CHUNK: _conflict("ALREADY_EXISTS"),
    C.DISK_ERROR: _server(),
    C.NO_SITE_KEY: _conflict(),
    C.OLDER_VERSION: _conflict(),
    C.ADAPTER_REFUSED: _bad(),
    C.KNOWLEDGE_REFUSED: _bad(),
    C.MODEL_REFUSED: _bad(),
    C.UNKNOWN_ARTIFACT: _missing(),
    C.CHUNK_OUT_OF_RANGE: ErrorRow("OUT_OF_RANGE", 400, INVALID_REQUEST_ERROR),
    # desired state
    C.TEMPLATE_ERROR: _bad(),
    C.UNSIGNED: _unauthenticated(),
    C.REPLAYED: _conflict("ABORTED"),
    # operator commands
    C.UNKNOWN_OPERATOR: _unauthenticated(),
    C.OPERATOR_REVOKED: _unauthenticated(),
    C.STALE: _unauthenticated(),
}


def row(code: ErrorCode) -> ErrorRow:
    return ERROR_TABLE[code]


def parse_code(value: object) -> ErrorCode | None:
    """The ErrorCode a peer sent (metadata value, JSON field), or None when it sent none we know."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    try:
        return ErrorCode(value)
    except ValueError:
        return None


# An error without a code: what its transport status means.
_BY_GRPC_STATUS = {
    "INVALID_ARGUMENT": C.INVALID_REQUEST,
    "OUT_OF_RANGE": C.INVALID_REQUEST,
    "NOT_FOUND": C.NOT_FOUND,
    "RESOURCE_EXHAUSTED": C.QUEUE_FULL,
    "UNAVAILABLE": C.UNAVAILABLE,
    "DEADLINE_EXCEEDED": C.DEADLINE_EXCEEDED,
    "CANCELLED": C.CANCELLED,
    "UNIMPLEMENTED": C.NOT_IMPLEMENTED,
    "UNAUTHENTICATED": C.UNAUTHENTICATED,
    "PERMISSION_DENIED": C.PERMISSION_DENIED,
}
_BY_HTTP_STATUS = {401: C.UNAUTHENTICATED, 403: C.PERMISSION_DENIED, 404: C.NOT_FOUND, 413: C.PAYLOAD_TOO_LARGE,
                   429: C.RATE_LIMITED, 503: C.UNAVAILABLE, 504: C.DEADLINE_EXCEEDED}  # fmt: skip


def code_for_grpc_status(name: str) -> ErrorCode:
    """The code of a gRPC error that carried none (grpc's own), by its status name."""
    return _BY_GRPC_STATUS.get(name, C.INTERNAL)


def code_for_http_status(status: int) -> ErrorCode:
    """The code of an HTTP error that carried none (the framework's own), by its status."""
    return _BY_HTTP_STATUS.get(status, C.INVALID_REQUEST if 400 <= status < 500 else C.INTERNAL)
