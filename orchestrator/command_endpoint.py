"""The command table on MQTT: operator commands as MQTT 5 requests on the commands topic.

The network thread only parses the request and queues it; one worker thread runs the
commands in the order they came (a slow one never stalls ingest) and answers each on its
response topic with its correlation data. Every request with a response topic gets an answer:
a refusal or a failure carries its error code. A failed command is also reported on the
orchestrator's errors topic. A site that requires signed commands checks each one's signature,
operator, time and nonce (`command_auth.py`) before it is queued; a refusal is answered at once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt

from edgefleet.orchestrator.command_auth import CommandAuth, Refused
from edgefleet.orchestrator.command_errors import failure
from edgefleet.orchestrator.command_table import CommandTable
from edgefleet.orchestrator.error_reports import ErrorReporter
from edgefleet.plumbing import failpoints
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import BadResponseTarget, ResponseTarget, reply, response_target
from edgefleet.proto.commands import Command
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import CommandResult, PayloadError, parse_payload
from edgefleet.proto.signing import without_envelope

log = logging.getLogger("edgefleet.orchestrator.commands")

FAILPOINT_RUN = "orchestrator.command"  # passed on the worker before each command runs


class MqttCommandEndpoint:
    def __init__(
        self, link: MqttLink, table: CommandTable, errors: ErrorReporter, auth: CommandAuth | None = None
    ) -> None:
        self.link, self.table, self.errors, self.auth = link, table, errors, auth
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgefleet-commands")

    def stop(self) -> None:
        """Finish the command running now; those still queued are dropped (their callers time out)."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Network thread: parse and queue, nothing more."""
        target: ResponseTarget | None
        try:
            target = response_target(msg)
        except BadResponseTarget as e:  # still run (a fire-and-forget command), but nothing can be answered
            log.warning("command without a usable response topic", extra={"reason": str(e)})
            target = None
        try:
            cmd = parse_payload(Command, msg.payload)
        except PayloadError as e:
            self._finish(msg.topic, target, failure(ErrorCode.INVALID_PAYLOAD, str(e), e.field))
            return
        if self.auth is not None:
            try:
                self.auth.check(cmd)
            except Refused as e:
                log.warning("command refused", extra={"op": cmd.op, "operator": cmd.operator, "code": str(e.code)})
                self._finish(msg.topic, target, failure(e.code, str(e)))
                return
        # the operator's name reaches an op that records it (approve, deny) only when its signature was checked
        auth, req = self.auth, cmd.request
        verified = auth is not None and bool(req.signature) and (auth.required or req.always_signed)
        cmd = without_envelope(cmd, verified=verified)
        try:
            self._worker.submit(self._run, cmd, msg.topic, target)
        except RuntimeError:  # shut down: the orchestrator is stopping
            self._finish(msg.topic, target, failure(ErrorCode.UNAVAILABLE, "the orchestrator is stopping; try again"))

    def _run(self, cmd: Command, topic: str, target: ResponseTarget | None) -> None:
        """Worker thread."""
        try:
            failpoints.hit(FAILPOINT_RUN)
            result = self.table.dispatch_command(cmd)
        except Exception as e:  # the table answers everything; this is the net under it
            log.exception("command failed outside its handler", extra={"op": cmd.op})
            result = failure(ErrorCode.INTERNAL, f"{cmd.op} failed inside the orchestrator: {type(e).__name__}: {e}")
        self._finish(topic, target, result)

    def _finish(self, topic: str, target: ResponseTarget | None, result: CommandResult) -> None:
        try:
            if not result.ok:
                self.errors.report(topic, result.code or ErrorCode.INTERNAL, result.message)
            if target is not None:
                reply(self.link, target, result.dumps())  # logs an answer that could not go out
        except Exception:
            log.exception("command answer not sent", extra={"response_topic": target.topic if target else ""})
