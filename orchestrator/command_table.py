"""One table of operator commands: op → (typed request, handler). The MQTT endpoint uses it, HTTP will.

The table knows nothing of MQTT: `dispatch` takes an op and its fields and always returns a
`CommandResult`. A refusal (`CommandError`, a request that does not validate, a template that
does not compile) is answered with its code; any other exception is a bug or a fault of the
machine (a full disk, a permission): it is logged with its traceback and answered as INTERNAL,
naming the cause. Nothing a handler raises goes unanswered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from pydantic import ValidationError

from edgefleet.orchestrator.command_errors import CommandError, failure
from edgefleet.orchestrator.command_requests import CommandRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import Command, CommandResult, PayloadError, describe_validation_error
from edgefleet.proto.templates import TemplateError

log = logging.getLogger("edgefleet.orchestrator.commands")

R = TypeVar("R", bound=CommandRequest)

ENVELOPE_FIELDS = frozenset({"v", "op"})
COMMAND_OPS: frozenset[str] = frozenset(get_args(Command.model_fields["op"].annotation))


@dataclass(frozen=True)
class CommandHandler:
    op: str
    request: type[CommandRequest]
    handle: Callable[[Any], CommandResult]


def clip(message: str, limit: int = 600) -> str:
    """A message cut short: validation errors quote a client's values whole."""
    return message if len(message) <= limit else f"{message[:limit]}… ({len(message)} characters)"


def command_fields(cmd: Command) -> dict[str, Any]:
    """The fields a `Command` carries for its op: those set to something other than their default."""
    return {
        name: getattr(cmd, name)
        for name, f in Command.model_fields.items()
        if name not in ENVELOPE_FIELDS and getattr(cmd, name) != f.get_default(call_default_factory=True)
    }


class CommandTable:
    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}

    def register(self, op: str, request: type[R], handle: Callable[[R], CommandResult]) -> None:
        if op in self._handlers:
            raise ValueError(f"command {op!r} has a handler already")
        self._handlers[op] = CommandHandler(op, request, handle)

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def dispatch_command(self, cmd: Command) -> CommandResult:
        return self.dispatch(cmd.op, command_fields(cmd))

    def dispatch(self, op: str, fields: Mapping[str, Any]) -> CommandResult:
        """Validate `fields` as `op`'s request and run its handler; every outcome is a `CommandResult`."""
        started = time.monotonic()
        handler = self._handlers.get(op)
        if handler is None:
            result = failure(
                ErrorCode.INVALID_REQUEST, f"unknown command {brief(op)}; known: {', '.join(sorted(self.ops))}"
            )
        else:
            result = self._run(handler, fields)
        log.info(
            "command answered",
            extra={
                "op": op,
                "ok": result.ok,
                "error_code": result.code if not result.ok else "",
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return result

    def _run(self, handler: CommandHandler, fields: Mapping[str, Any]) -> CommandResult:
        try:
            request = handler.request.model_validate(dict(fields))
        except ValidationError as e:
            return failure(
                ErrorCode.INVALID_PAYLOAD, f"invalid {handler.op} request: {clip(describe_validation_error(e))}"
            )
        try:
            return handler.handle(request)
        except CommandError as e:
            return failure(e.code, str(e))
        except TemplateError as e:
            return failure(ErrorCode.TEMPLATE_ERROR, str(e))
        except PayloadError as e:
            return failure(ErrorCode.INVALID_PAYLOAD, clip(str(e)))
        except Exception as e:
            log.exception("command failed", extra={"op": handler.op})
            return failure(
                ErrorCode.INTERNAL, f"{handler.op} failed inside the orchestrator: {type(e).__name__}: {clip(str(e))}"
            )
