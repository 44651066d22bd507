"""The one mapping from the node's typed errors to gRPC status codes."""

from __future__ import annotations

import grpc

from edgefleet.node import errors

_CODES: list[tuple[type[errors.EdgefleetError], grpc.StatusCode]] = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),  # ContextOverflow included
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OverBudget, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.EngineFailure, grpc.StatusCode.INTERNAL),
]


def grpc_code(error: errors.EdgefleetError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL
