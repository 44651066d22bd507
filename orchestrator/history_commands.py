"""The `telemetry-history` command: one node's last hour of telemetry for the console's plots."""

from __future__ import annotations

import time

from edgefleet.orchestrator.command_errors import CommandError
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.telemetry_history import TelemetryHistory, UnknownMetric
from edgefleet.proto.commands import TelemetryHistoryRequest
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import brief
from edgefleet.proto.payloads import CommandResult

WINDOW_S = 3600


class HistoryCommands:
    def __init__(self, history: TelemetryHistory) -> None:
        self.history = history

    def register(self, table: CommandTable) -> None:
        table.register(TelemetryHistoryRequest, self.telemetry_history)

    def telemetry_history(self, req: TelemetryHistoryRequest) -> CommandResult:
        node = req.target.removeprefix("node:")
        since = time.time() - WINDOW_S
        try:
            if req.name:
                series = {req.name: self.history.series(node, req.name, since)}
            else:
                series = self.history.all_series(node, since)
        except UnknownMetric as e:
            raise CommandError(f"{e} (asked for {brief(req.name)})", ErrorCode.INVALID_REQUEST, field="name") from e
        return CommandResult(
            ok=True,
            data={
                "node": node,
                "bucket_s": self.history.bucket_s,
                "series": {m: [[ts, v] for ts, v in s] for m, s in series.items()},
            },
        )
