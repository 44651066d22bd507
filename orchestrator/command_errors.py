"""Typed errors of operator commands: every failure is answered with a code and a message.

`CommandError` is a refusal a handler raises on purpose (COMMAND_REFUSED unless it names
another code); anything else a handler raises is an internal error, answered as INTERNAL with
the cause named, in `CommandResult.code`. A refusal about one field of the request names it
(`field`, dotted: "target", "template.version"), in `CommandResult.field`, so a form can show the
reason next to that field without reading the message.
"""

from __future__ import annotations

from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult


class CommandError(Exception):
    """A command the orchestrator refuses; the message tells the operator why."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.COMMAND_REFUSED, *, field: str = "") -> None:
        super().__init__(message)
        self.code, self.field = code, field


def failure(code: ErrorCode, message: str, field: str = "") -> CommandResult:
    """The answer to a command that failed (`field`: the request field it is about, if one)."""
    return CommandResult(ok=False, message=message, code=code.value, field=field)


def error_code_of(result: CommandResult) -> ErrorCode | None:
    """The code of a failed command's answer (None for a success)."""
    if result.ok:
        return None
    try:
        return ErrorCode(result.code)
    except ValueError:  # a failure without a known code is still a failure
        return ErrorCode.INTERNAL
