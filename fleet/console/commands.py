"""The console's one way to change the fleet: the orchestrator's command table, the CLI's way.

Every push and removal is a `Command` sent with the CLI's `OrchestratorSession` (MQTT 5
request/response on the orchestrator's commands topic); refusals come back as the orchestrator's
`CommandResult` (code and message), which the pages show next to the field they concern.
Calls block: web handlers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from typing import Any

from pydantic import ValidationError

from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.fleet.control import OrchestratorSession, OrchestratorUnreachable
from edgefleet.plumbing.mqtt_rpc import NoAnswer
from edgefleet.proto.payload_base import PAYLOAD_VERSION
from edgefleet.proto.payloads import (
    MAX_UPLOAD_CHUNK_BYTES,
    Command,
    CommandResult,
    PayloadError,
    UploadChunk,
    describe_validation_error,
    parse_payload,
)

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

    def call_raw(self, fields: dict[str, Any], timeout: float = 5.0) -> CommandResult:
        """An op this edgefleet's `Command` model may not know yet (the orchestrator decides)."""
        payload = json.dumps({"v": PAYLOAD_VERSION, **fields}).encode()
        try:
            s = self._connected()
            answer = s.rpc.call(s.topics.orchestrator_commands(), payload, timeout)
            return parse_payload(CommandResult, answer)
        except (OrchestratorUnreachable, NoAnswer, PayloadError) as e:
            return CommandResult(ok=False, code=UNAVAILABLE, message=str(e))

    def status(self) -> CommandResult:
        return self.call(Command(op="status"), timeout=3.0)

    def telemetry_history(self, node_id: str) -> CommandResult:
        """The orchestrator's per-minute history of a node (op `telemetry-history`), where it has one."""
        return self.call_raw({"op": "telemetry-history", "target": node_id})

    def upload(self, data: bytes) -> tuple[str, CommandResult]:
        """Hand a file to the orchestrator in confirmed pieces, like `edgefleet fleet push-adapter` does."""
        sha = hashlib.sha256(data).hexdigest()
        step = MAX_UPLOAD_CHUNK_BYTES
        result = CommandResult(ok=True)
        for i in range(-(-len(data) // step)):
            piece = UploadChunk(
                sha256=sha,
                size=len(data),
                chunk_bytes=step,
                index=i,
                data=base64.b64encode(data[i * step : (i + 1) * step]).decode(),
            )
            result = self.call(Command(op="upload-chunk", upload=piece))
            if not result.ok or result.data.get("missing") == 0:
                break
        return sha, result

    def push_artifact(self, op: str, name: str, version: str, target: str, data: bytes) -> CommandResult:
        """push-adapter or push-knowledge: upload, then ask the orchestrator to sign and publish it."""
        sha, uploaded = self.upload(data)
        if not uploaded.ok:
            return CommandResult(ok=False, code=uploaded.code, message=f"upload refused: {uploaded.message}")
        try:
            cmd = Command(op=op, name=name, version=version, sha256=sha, target=target)  # type: ignore[arg-type]
        except ValidationError as e:
            return CommandResult(ok=False, code="invalid_payload", message=describe_validation_error(e))
        return self.call(cmd)

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
