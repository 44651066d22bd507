"""One table of operator commands: request type → handler, one per op; the MQTT endpoint runs it.

The requests are typed once, in `proto/commands.py`: a `Command` is validated when it is parsed
off the wire (or built), and the table hands its typed request to the op's handler without
validating it again. The table knows nothing of MQTT: `run` takes a `Command` and always returns
a `CommandResult`. A refusal (`CommandError`, a template that does not compile) is answered with
its code; any other exception is a bug or a fault of the machine (a full disk, a permission): it
is logged with its traceback and answered as INTERNAL, naming the cause. Nothing a handler raises
goes unanswered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from edgefleet.orchestrator.command_errors import CommandError, failure
from edgefleet.proto.commands import COMMAND_OPS, Command, CommandRequest, op_of
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import CommandResult, PayloadError
from edgefleet.proto.templates import TemplateError

log = logging.getLogger("edgefleet.orchestrator.commands")

R = TypeVar("R", bound=CommandRequest)

__all__ = ["COMMAND_OPS", "CommandHandler", "CommandTable", "clip"]


@dataclass(frozen=True)
class CommandHandler:
    op: str
    request: type[CommandRequest]
    handle: Callable[[Any], CommandResult]


def clip(message: str, limit: int = 600) -> str:
    """A message cut short: validation errors quote a client's values whole."""
    return message if len(message) <= limit else f"{message[:limit]}… ({len(message)} characters)"


class CommandTable:
    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}

    def register(self, request: type[R], handle: Callable[[R], CommandResult]) -> None:
        """`handle` answers the op of `request` (its `op` literal); one handler per op."""
        op = op_of(request)
        if op in self._handlers:
            raise ValueError(f"command {op!r} has a handler already")
        self._handlers[op] = CommandHandler(op, request, handle)

    def wrap(self, op: str, around: Callable[[Any, Callable[[Any], CommandResult]], CommandResult]) -> None:
        """Run `op`'s handler through `around(request, handler)` (a check before it, a lock around it)."""
        inner = self._handlers[op]
        self._handlers[op] = CommandHandler(op, inner.request, lambda req: around(req, inner.handle))

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def dispatch(self, op: str, fields: Mapping[str, Any]) -> CommandResult:
        """`op` with `fields` (as an in-process caller gives them): validated into its `Command`, then run."""
        try:
            cmd = Command(op=op, **fields)
        except PayloadError as e:
            known = op in COMMAND_OPS
            code = ErrorCode.INVALID_PAYLOAD if known else ErrorCode.INVALID_REQUEST
            message = f"invalid {op} request: {clip(str(e).split(': ', 1)[-1])}"
            if not known:
                message = f"unknown command {brief(op)}; known: {', '.join(sorted(self.ops))}"
            return self._answered(op, time.monotonic(), failure(code, message, e.field if known else "op"))
        return self.dispatch_command(cmd)

    def dispatch_command(self, cmd: Command) -> CommandResult:
        """Run the handler of `cmd`'s op on its typed request; every outcome is a `CommandResult`."""
        started = time.monotonic()
        handler = self._handlers.get(cmd.op)
        if handler is None:
            result = failure(ErrorCode.INVALID_REQUEST, f"no handler for command {brief(cmd.op)} in this orchestrator")
        else:
            result = self._run(handler, cmd.request)
        return self._answered(cmd.op, started, result)

    @staticmethod
    def _answered(op: str, started: float, result: CommandResult) -> CommandResult:
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

    def _run(self, handler: CommandHandler, request: CommandRequest) -> CommandResult:
        try:
            return handler.handle(request)
        except CommandError as e:
            return failure(e.code, str(e), e.field)
        except TemplateError as e:
            return failure(ErrorCode.TEMPLATE_ERROR, str(e))
        except PayloadError as e:
            return failure(ErrorCode.INVALID_PAYLOAD, clip(str(e)), e.field)
        except Exception as e:
            log.exception("command failed", extra={"op": handler.op})
            return failure(
                ErrorCode.INTERNAL, f"{handler.op} failed inside the orchestrator: {type(e).__name__}: {clip(str(e))}"
            )
