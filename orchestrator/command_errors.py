"""Typed errors of operator commands: every failure is answered with a code and a message.

`CommandError` is a refusal a handler raises on purpose (COMMAND_REFUSED unless it names
another code); anything else a handler raises is an internal error, answered as INTERNAL with
the cause named, in `CommandResult.code`.
"""

from __future__ import annotations

from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult


class CommandError(Exception):
    """A command the orchestrator refuses; the message tells the operator why."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.COMMAND_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def failure(code: ErrorCode, message: str) -> CommandResult:
    """The answer to a command that failed."""
    return CommandResult(ok=False, message=message, code=code.value)


def error_code_of(result: CommandResult) -> ErrorCode | None:
    """The code of a failed command's answer (None for a success)."""
    if result.ok:
        return None
    try:
        return ErrorCode(result.code)
    except ValueError:  # a failure without a known code is still a failure
        return ErrorCode.INTERNAL
