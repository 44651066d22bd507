"""The console's one way to change the fleet: the orchestrator's command table, the CLI's way.

Every push and removal is a `Command` (proto/commands.py) sent with the CLI's `OrchestratorSession` (MQTT 5
request/response on the orchestrator's commands topic); refusals come back as the orchestrator's
`CommandResult` (code and message), which the pages show next to the field they concern.
Calls block: web handlers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import threading

from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.fleet.control import OrchestratorSession, OrchestratorUnreachable
from edgefleet.fleet.uploads import upload
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult, PayloadError

log = logging.getLogger("edgefleet.console.commands")

UNAVAILABLE = "unavailable"


class CommandBridge:
    def __init__(self, settings: ConsoleSettings, timeout_s: float = 30.0) -> None:
        self.fleet_settings = settings.fleet_settings()
        self.timeout_s = timeout_s
        self._session: OrchestratorSession | None = None
        self._lock = threading.Lock()

    def _connected(self) -> OrchestratorSession:
        with self._lock:
            if self._session is None:
                self._session = OrchestratorSession(self.fleet_settings, connect_timeout=5.0)
            return self._session

    def call(self, command: Command, timeout: float | None = None) -> CommandResult:
        try:
            result = self._connected().call(command, timeout or self.timeout_s)
        except OrchestratorUnreachable as e:
            return CommandResult(ok=False, code=UNAVAILABLE, message=str(e))
        if not result.ok:
            log.info("command refused", extra={"op": command.op, "code": result.code, "reason": result.message[:300]})
        return result

    def status(self) -> CommandResult:
        return self.call(Command(op="status"), timeout=3.0)

    def telemetry_history(self, node_id: str) -> CommandResult:
        """The orchestrator's per-minute history of a node (op `telemetry-history`), where it has one."""
        try:
            cmd = Command(op="telemetry-history", target=node_id)
        except PayloadError as e:
            return CommandResult(ok=False, code=ErrorCode.INVALID_PAYLOAD.value, message=str(e))
        return self.call(cmd, timeout=5.0)

    def push_artifact(self, op: str, name: str, version: str, target: str, data: bytes) -> CommandResult:
        """push-adapter or push-knowledge: upload (`fleet/uploads.py`), then the orchestrator signs and publishes it."""
        sha, uploaded = upload(self.call, data)
        if not uploaded.ok:
            return CommandResult(ok=False, code=uploaded.code, message=f"upload refused: {uploaded.message}")
        try:
            cmd = Command(op=op, name=name, version=version, sha256=sha, target=target)
        except PayloadError as e:
            return CommandResult(ok=False, code=ErrorCode.INVALID_PAYLOAD.value, message=str(e), field=e.field)
        return self.call(cmd)

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
