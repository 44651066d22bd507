"""Turns inbox rows into answers: rule → variables → template → engine → result row in the outbox.

One thread owns the work: it claims pending rows (as many as the engine has room for), submits
them, and writes each finished answer with `ledger.complete`, which marks the inbox row done and
inserts the outbox row in one transaction. The engine's callbacks only hand events over a queue,
so no SQLite write ever runs on the decode thread. A failure is an answer too (`ok: false` with an
error code), except a transient one (queue full, node draining), which leaves the row pending.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.node.engine.types import Failed, Finished, TextDelta
from edgefleet.node.errors import TRANSIENT, EdgefleetError, StorageFull, mqtt_code
from edgefleet.node.sensors.intake import Report
from edgefleet.node.sensors.ledger import InboxRow, SensorLedger
from edgefleet.node.sensors.messages import MessageError, extract_variables, output_topic
from edgefleet.node.sensors.stats import SensorStats
from edgefleet.node.service import GenerateInput, NodeService
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.rules import RuleSpec, SensorResult

log = logging.getLogger("edgefleet.node.sensors")


@dataclass
class _Job:
    row: InboxRow
    rule: RuleSpec
    request_id: str = ""
    started: float = field(default_factory=time.monotonic)
    text: list[str] = field(default_factory=list)


class Answerer:
    def __init__(
        self,
        service: NodeService,
        ledger: SensorLedger,
        stats: SensorStats,
        rules: Callable[[], dict[str, RuleSpec]],
        results_topic: str,
        published: Callable[[], None],
        max_in_flight: int,
        report: Report | None = None,
    ) -> None:
        self.service, self.ledger, self.stats = service, ledger, stats
        self.rules = rules
        self.results_topic = results_topic
        self.published = published  # wakes the outbox publisher
        self.max_in_flight = max_in_flight
        self._events: queue.Queue[tuple[_Job, Finished | Failed] | None] = queue.Queue()
        self._stop = threading.Event()
        self._in_flight: dict[str, _Job] = {}
        self.report: Report = report or (lambda code, message, topic="", **_: None)
        # Work the disk had no room to record, tried again each turn: finished answers, rows to start.
        self._unwritten: list[tuple[_Job, Finished | Failed]] = []
        self._unstarted: list[InboxRow] = []
        self._thread = threading.Thread(target=self._run, name="edgefleet-sensor-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)
        self._thread.join(10)

    def wake(self) -> None:
        self._events.put(None)

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._events.get(timeout=0.5)
            except queue.Empty:
                item = None
            items = self._unwritten + ([item] if item is not None else [])
            self._unwritten = []
            try:
                while True:
                    items.extend(i for i in [self._events.get_nowait()] if i is not None)
            except queue.Empty:
                pass
            for it in items:
                try:
                    self._finish(*it)
                except StorageFull as e:
                    self._unwritten.append(it)
                    self._disk_full(e)
                except Exception:
                    log.exception("writing an answer failed")
            try:
                self._claim()
            except StorageFull as e:
                self._disk_full(e)
            except Exception:
                log.exception("starting answers failed")

    def _disk_full(self, e: StorageFull) -> None:
        self.report(ErrorCode.STORAGE_FULL, f"sensor answers wait for room: {e}", self.results_topic, once_per=60.0)

    def _claim(self) -> None:
        rows, self._unstarted = self._unstarted, []
        room = self.max_in_flight - len(self._in_flight) - len(rows)
        if room > 0:
            rows += self.ledger.claim_pending(room)
        for i, row in enumerate(rows):
            try:
                self._start(row)
            except StorageFull:
                self._unstarted += rows[i:]
                raise

    # -- one message --------------------------------------------------------------------------------
    def _start(self, row: InboxRow) -> None:
        rule = self.rules().get(row.rule)
        if rule is None:
            self._error(row, None, ErrorCode.UNKNOWN_RULE, f"rule {row.rule!r} is no longer in effect on this node")
            return
        try:
            variables = extract_variables(rule, row.topic, row.payload)
        except MessageError as e:
            self._error(row, rule, e.code, e.message)
            return
        inp = GenerateInput(
            template=rule.template,
            variables=variables,
            max_tokens=rule.max_tokens,
            temperature=rule.temperature,
            seed=rule.seed,
            json_schema=json.dumps(rule.json_schema) if rule.json_schema else "",
            adapter=rule.adapter or "",
        )
        request_id = f"sensor-{secrets.token_hex(6)}"
        job = _Job(row, rule, request_id)

        def sink(event: TextDelta | Finished | Failed) -> None:  # engine thread: hand over only
            if isinstance(event, TextDelta):
                job.text.append(event.text)
            else:
                self._events.put((job, event))

        try:
            self.service.generate(inp, request_id, sink, time.monotonic())
        except TRANSIENT as e:
            self.ledger.release(row.seq)
            log.info("engine busy; message stays pending", extra={"rule": rule.name, "reason": str(e)})
            return
        except EdgefleetError as e:
            self._error(row, rule, mqtt_code(e), str(e))
            return
        self._in_flight[request_id] = job

    def _finish(self, job: _Job, event: Finished | Failed) -> None:
        self._in_flight.pop(job.request_id, None)
        row, rule = job.row, job.rule
        if isinstance(event, Failed):
            if isinstance(event.error, TRANSIENT):
                self.ledger.release(row.seq)
                return
            self._error(row, rule, mqtt_code(event.error), str(event.error))
            return
        text = "".join(job.text) + event.text_tail
        answer_json = None
        if rule.json_schema:
            try:
                answer_json = json.loads(text)
            except ValueError:
                self._error(row, rule, ErrorCode.INVALID_ANSWER, f"the answer is not JSON: {text[:200]!r}")
                return
        u = event.usage
        result = self._result(
            row,
            rule,
            ok=True,
            answer_text=text,
            answer_json=answer_json,
            queue_ms=round(u.queue_ms, 2),
            ttft_ms=round(u.time_to_first_token_ms, 2),
            total_ms=round(u.total_ms, 2),
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
        )
        self._write(row, rule, result)
        self.stats.answered(rule.name, (time.time() - row.received_at) * 1000)

    def _error(self, row: InboxRow, rule: RuleSpec | None, code: ErrorCode, message: str) -> None:
        log.warning("sensor message answered with an error", extra={"rule": row.rule, "code": code, "reason": message})
        self._write(row, rule, self._result(row, rule, ok=False, error_code=code, error=message))
        self.stats.error(row.rule)

    def _result(self, row: InboxRow, rule: RuleSpec | None, **fields: object) -> SensorResult:
        template = self.service.templates.get(rule.template) if rule else None
        adapter = self.service.engine.adapters.get(rule.adapter) if rule and rule.adapter else None
        return SensorResult(
            rule=row.rule,
            rule_version=rule.version if rule else "",
            source_topic=row.topic,
            source_id=row.id,
            node_id=self.service.settings.node_id,
            model=self.service.model_file.name,
            adapter=f"{adapter.name}@{adapter.version}" if adapter else "",
            template=f"{template.spec.name}@{template.spec.version}" if template else "",
            **fields,  # type: ignore[arg-type]
        )

    def _write(self, row: InboxRow, rule: RuleSpec | None, result: SensorResult) -> None:
        topic = (
            output_topic(rule, result.node_id, row.topic, row.id, self.results_topic) if rule else self.results_topic
        )
        self.ledger.complete(row.seq, topic, result.dumps(), source_id=row.id)
        self.published()
