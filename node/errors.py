"""Typed errors of the node. Each edge maps them once: gRPC in api/status.py, MQTT by `mqtt_code`."""

from __future__ import annotations

from edgefleet.proto.error_codes import ErrorCode


class EdgefleetError(Exception):
    """Base of every error the node raises on purpose; the message is shown to the caller."""


class InvalidRequest(EdgefleetError):
    """The request is malformed or out of range (gRPC INVALID_ARGUMENT)."""


class ContextOverflow(InvalidRequest):
    """The prompt (plus room for one token) does not fit the slot's context."""


class NotFound(EdgefleetError):
    """A named thing (adapter, template, …) does not exist on this node."""


class QueueFull(EdgefleetError):
    """Every slot is busy and the waiting queue is at its limit (gRPC RESOURCE_EXHAUSTED)."""


class Unavailable(EdgefleetError):
    """The node cannot take work now: draining, shedding load for heat, or not ready."""


class ProfileError(EdgefleetError):
    """A firmware profile is missing, malformed or does not fit the device."""


class ModelError(EdgefleetError):
    """The model file cannot be found or loaded."""


class OverBudget(EdgefleetError):
    """The memory estimate exceeds the profile's budget."""


class EngineFailure(EdgefleetError):
    """llama.cpp reported an error while decoding (gRPC INTERNAL)."""


_MQTT_CODES: list[tuple[type[EdgefleetError], ErrorCode]] = [
    (ContextOverflow, ErrorCode.CONTEXT_OVERFLOW),
    (InvalidRequest, ErrorCode.INVALID_REQUEST),
    (NotFound, ErrorCode.NOT_FOUND),
    (QueueFull, ErrorCode.QUEUE_FULL),
    (Unavailable, ErrorCode.UNAVAILABLE),
    (OverBudget, ErrorCode.OVER_BUDGET),
    (EngineFailure, ErrorCode.ENGINE_FAILURE),
]


def mqtt_code(error: BaseException) -> ErrorCode:
    """The `error_code` of an MQTT error result or report for a node error."""
    for cls, code in _MQTT_CODES:
        if isinstance(error, cls):
            return code
    return ErrorCode.INTERNAL


TRANSIENT = (QueueFull, Unavailable)  # worth trying again later (the message stays in the inbox)
