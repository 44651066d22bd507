"""The pipeline's middle stage: inbox rows into answers, rule → variables → template → engine → outbox.

One thread owns the work. It takes items from its queue (`Accepted`, `RulesChanged`, the engine's
`EngineDone`), claims pending rows (as many as the engine has room for), submits them, and writes
each finished answer with `ledger.complete`, which marks the inbox row done and inserts the outbox
row in one transaction, then puts `OutboxAdded` on the publisher's queue. The engine's callbacks
only put items on the queue, so no SQLite write ever runs on the decode thread.

A failure is an answer too (`ok: false` with an error code), except a transient one (queue full,
node draining), which leaves the row pending without counting it as a try. An attempt that fails
unexpectedly (an exception here, or the node dying mid-answer) is tried again, up to
`max_attempts` tries in all (the ledger's `attempts`); then the message is parked: answered
`poison_message` and reported on the node's errors topic, never tried again.

The template and adapter versions in a result are those the answer was started with: the service
reports them when the engine takes the request, so a template swapped mid-answer does not relabel it.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable

from edgefleet.node.engine.types import Event, Failed, Finished, TextDelta
from edgefleet.node.errors import TRANSIENT, EdgefleetError, StorageFull, code_of
from edgefleet.node.sensors.ledger import InboxRow, SensorLedger
from edgefleet.node.sensors.messages import MessageError, extract_variables, output_topic
from edgefleet.node.sensors.reports import Report, no_report
from edgefleet.node.sensors.stages import Answer, AnswererQueue, EngineDone, OutboxAdded, PublisherQueue, Stop
from edgefleet.node.sensors.stats import SensorStats
from edgefleet.node.service import NodeService
from edgefleet.node.service_types import GenerateInput
from edgefleet.plumbing import failpoints
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.rules import RuleSpec, SensorResult

log = logging.getLogger("edgefleet.node.sensors")

IDLE_S = 0.5  # with nothing on the queue, look for pending rows this often (rows released, disk room)


class Answerer:
    def __init__(
        self,
        service: NodeService,
        ledger: SensorLedger,
        stats: SensorStats,
        rules: Callable[[], dict[str, RuleSpec]],
        results_topic: str,
        inbox: AnswererQueue,
        publisher: PublisherQueue,
        max_in_flight: int,
        max_attempts: int,
        report: Report = no_report,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.service, self.ledger, self.stats = service, ledger, stats
        self.rules = rules
        self.results_topic = results_topic
        self.inbox = inbox  # this stage's queue
        self.publisher = publisher  # the next stage's queue: an `OutboxAdded` for each answer written
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.report = report
        self._in_flight: dict[str, Answer] = {}
        # Work the disk had no room to record, tried again each turn: finished answers, rows to start.
        self._unwritten: list[EngineDone] = []
        self._unstarted: list[InboxRow] = []
        self._thread = threading.Thread(target=self._run, name="edgefleet-sensor-answers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop taking work; answers still in the engine are given back to the inbox, not counted as tries."""
        self.inbox.put(Stop())
        self._thread.join(10)
        if self._thread.is_alive():
            return
        for answer in self._in_flight.values():
            try:
                self.ledger.release(answer.row.seq, tried=False)
            except Exception:  # a full disk: the row is pending at the next start anyway, one try counted
                log.exception("giving back an unfinished answer failed", extra={"rule": answer.rule.name})
        self._in_flight.clear()

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                items = [self.inbox.get(timeout=IDLE_S)]
            except queue.Empty:
                items = []
            try:
                while True:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if any(isinstance(i, Stop) for i in items):
                return
            done, self._unwritten = self._unwritten + [i for i in items if isinstance(i, EngineDone)], []
            for d in done:
                try:
                    self._finish(d)
                except StorageFull as e:
                    self._unwritten.append(d)
                    self._disk_full(e)
                except Exception:
                    log.exception("writing an answer failed", extra={"rule": d.answer.rule.name})
                    self._failed(d.answer.row, d.answer.rule, "writing its answer failed")
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
            except Exception:
                log.exception("starting an answer failed", extra={"rule": row.rule})
                self._failed(row, self.rules().get(row.rule), "starting its answer failed")

    # -- one message --------------------------------------------------------------------------------
    def _start(self, row: InboxRow) -> None:
        rule = self.rules().get(row.rule)
        if rule is None:
            self._error(row, None, ErrorCode.UNKNOWN_RULE, f"rule {row.rule!r} is no longer in effect on this node")
            return
        if row.attempts > self.max_attempts:  # the tries before this one ended with the node (a crash)
            self._park(row, rule)
            return
        try:
            variables = extract_variables(rule, row.topic, row.payload)
        except MessageError as e:
            self._error(row, rule, e.code, e.message)
            return
        failpoints.hit("sensors.answer")
        inp = GenerateInput(
            template=rule.template,
            variables=variables,
            max_tokens=rule.max_tokens,
            temperature=rule.temperature,
            seed=rule.seed,
            json_schema=json.dumps(rule.json_schema) if rule.json_schema else "",
            adapter=rule.adapter or "",
            collection=rule.collection or "",
            retrieval_top_k=rule.top_k or 0,
        )
        answer = Answer(row, rule, f"sensor-{secrets.token_hex(6)}")

        def sink(event: Event) -> None:  # engine thread: hand over only (no tools: no ToolCallDelta)
            if isinstance(event, TextDelta):
                answer.text.append(event.text)
            elif isinstance(event, Finished | Failed):
                self.inbox.put(EngineDone(answer, event))

        try:
            queued = self.service.generate_queued(inp, answer.request_id, sink, time.monotonic())
        except TRANSIENT as e:
            self.ledger.release(row.seq, tried=False)
            log.info("engine busy; message stays pending", extra={"rule": rule.name, "reason": str(e)})
            return
        except EdgefleetError as e:
            self._error(row, rule, code_of(e), str(e))
            return
        # The versions this answer is made with, fixed now: the engine may finish it after a swap.
        answer.template, answer.adapter = queued.template, queued.adapter
        answer.sources, answer.grounding = queued.sources, queued.grounding
        self._in_flight[answer.request_id] = answer

    def _finish(self, done: EngineDone) -> None:
        answer, event = done.answer, done.event
        self._in_flight.pop(answer.request_id, None)
        failpoints.hit("sensors.answer.finish")
        row, rule = answer.row, answer.rule
        if isinstance(event, Failed):
            if isinstance(event.error, TRANSIENT):
                self.ledger.release(row.seq, tried=False)
                return
            self._error(row, rule, code_of(event.error), str(event.error), answer)
            return
        text = "".join(answer.text) + event.text_tail
        answer_json = None
        if rule.json_schema:
            try:
                answer_json = json.loads(text)
            except ValueError:
                self._error(row, rule, ErrorCode.INVALID_ANSWER, f"the answer is not JSON: {text[:200]!r}", answer)
                return
        u = event.usage
        result = self._result(
            row,
            rule,
            answer,
            ok=True,
            answer_text=text,
            answer_json=answer_json,
            queue_ms=round(u.queue_ms, 2),
            ttft_ms=round(u.time_to_first_token_ms, 2),
            total_ms=round(u.total_ms, 2),
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            **_grounding(answer),
        )
        self._write(row, rule, result)
        self.stats.answered(rule.name, (time.time() - row.received_at) * 1000)

    def _failed(self, row: InboxRow, rule: RuleSpec | None, what: str) -> None:
        """An attempt ended unexpectedly: the row is tried again, or parked after its last try.
        Never raises: a row this cannot give back stays `running` and is pending at the next start."""
        try:
            if rule is not None and row.attempts >= self.max_attempts:
                self._park(row, rule)
                return
            self.ledger.release(row.seq, tried=True)
            log.warning("sensor message tried again", extra={"rule": row.rule, "attempts": row.attempts, "why": what})
        except Exception:
            log.exception("a failed sensor message could not be given back", extra={"rule": row.rule})

    def _park(self, row: InboxRow, rule: RuleSpec) -> None:
        tries = min(row.attempts, self.max_attempts)
        message = (
            f"message {row.id[:200]} on {row.topic[:200]} for rule {rule.name} parked after {tries} failed "
            f"tries (EDGEFLEET_SENSOR_MAX_ATTEMPTS={self.max_attempts}); it is not tried again"
        )
        self.report(ErrorCode.POISON_MESSAGE, message, row.topic)
        self._error(row, rule, ErrorCode.POISON_MESSAGE, message)

    def _error(
        self, row: InboxRow, rule: RuleSpec | None, code: ErrorCode, message: str, answer: Answer | None = None
    ) -> None:
        log.warning("sensor message answered with an error", extra={"rule": row.rule, "code": code, "reason": message})
        self._write(row, rule, self._result(row, rule, answer, ok=False, error_code=code, error=message))
        self.stats.error(row.rule)

    def _result(self, row: InboxRow, rule: RuleSpec | None, answer: Answer | None, **fields: object) -> SensorResult:
        template, adapter = (answer.template, answer.adapter) if answer else self._versions_now(rule)
        return SensorResult(
            rule=row.rule,
            rule_version=rule.version if rule else "",
            source_topic=row.topic,
            source_id=row.id,
            node_id=self.service.settings.node_id,
            model=self.service.model_file.name,
            adapter=adapter,
            template=template,
            **fields,  # type: ignore[arg-type]
        )

    def _versions_now(self, rule: RuleSpec | None) -> tuple[str, str]:
        """(template, adapter) versions in effect now, for a message answered before the engine took it."""
        template = self.service.templates.get(rule.template) if rule else None
        adapter = self.service.engine.adapters.get(rule.adapter) if rule and rule.adapter else None
        return (
            f"{template.spec.name}@{template.spec.version}" if template else "",
            f"{adapter.name}@{adapter.version}" if adapter else "",
        )

    def _write(self, row: InboxRow, rule: RuleSpec | None, result: SensorResult) -> None:
        topic = (
            output_topic(rule, result.node_id, row.topic, row.id, self.results_topic) if rule else self.results_topic
        )
        self.ledger.complete(row.seq, topic, result.dumps(), source_id=row.id)
        self.publisher.put(OutboxAdded())


def _grounding(answer: Answer) -> dict[str, object]:
    """A knowledge answer's sources, citations and abstention, as the result carries them."""
    v = answer.grounding.verdict if answer.grounding is not None else None
    cites = [
        {"n": c.n, "chunk_id": c.chunk_id, "document_id": c.doc_id, "page": c.page, "quote": c.quote}
        for c in (v.citations if v is not None else ())
    ]
    return {"sources": list(answer.sources), "citations": cites, "abstained": bool(v and v.abstained)}
