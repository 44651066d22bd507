"""What the sensor pipeline's stages hand each other: intake → answerer → publisher, one queue each.

The plane owns the queues and the stages. Each stage has one input queue and one thread (the
intake's input is the broker's: it runs on the MQTT network thread), and tells the next stage by
putting an item on that stage's queue; no stage calls another. The ledger keeps what must last:
an item says where to look, the rows are the work.

- intake → answerer: `Accepted` (a message is in the inbox), `RulesChanged`;
- engine thread → answerer: `EngineDone` (the engine's last event for one answer);
- answerer → publisher: `OutboxAdded` (an answer is in the outbox);
- request handler / engine thread → publisher: `Reply` (an ad-hoc answer, not kept: the requester retries).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

from edgefleet.node.engine.types import Failed, Finished
from edgefleet.node.knowledge.grounded_sink import Grounding
from edgefleet.node.sensors.ledger import InboxRow
from edgefleet.plumbing.mqtt_rpc import ResponseTarget
from edgefleet.proto.rules import RuleSpec


@dataclass(frozen=True)
class Accepted:
    """A message was recorded in the inbox, once for each of these rules."""

    topic: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class RulesChanged:
    """The effective rules changed: pending rows may now be answerable (or answered `unknown_rule`)."""


@dataclass
class Answer:
    """One inbox row being answered. `template` and `adapter` are the versions the answer was
    started with (`name@version`), fixed when the engine took it, whatever is swapped in later."""

    row: InboxRow
    rule: RuleSpec
    request_id: str = ""
    template: str = ""
    adapter: str = ""
    started: float = field(default_factory=time.monotonic)
    text: list[str] = field(default_factory=list)  # filled on the engine thread, read after EngineDone
    sources: list[str] = field(default_factory=list)  # a rule with a collection: the chunks in the prompt
    grounding: Grounding | None = None  # its verdict is set before the engine's Finished is handed over


@dataclass(frozen=True)
class EngineDone:
    """The engine finished (or failed) an answer."""

    answer: Answer
    event: Finished | Failed


@dataclass(frozen=True)
class OutboxAdded:
    """An answer was written to the outbox."""


@dataclass(frozen=True)
class Reply:
    """An answer to an ad-hoc request, for its response topic (`request_topic`: where it came in)."""

    target: ResponseTarget
    payload: bytes
    request_topic: str


@dataclass(frozen=True)
class Stop:
    """The stage's last item: finish up and return."""


AnswererItem = Accepted | RulesChanged | EngineDone | Stop
PublisherItem = OutboxAdded | Reply | Stop
AnswererQueue = queue.Queue[AnswererItem]
PublisherQueue = queue.Queue[PublisherItem]
