"""The pipeline's last stage: everything the sensor plane sends to the broker leaves from here.

Outbox rows (`OutboxAdded`) go out in order, one QoS 1 message at a time, each deleted only on its
PUBACK; while the broker is away they wait and go out first when it is back. Ad-hoc replies
(`Reply`) are published as they come and not kept (the requester owns retries); one that cannot
be sent is an error report. Runs on its own thread, so neither the engine thread nor the network
thread ever waits for the broker.
"""

from __future__ import annotations

import logging
import queue
import threading

from edgefleet.node.errors import StorageFull
from edgefleet.node.sensors.ledger import SensorLedger
from edgefleet.node.sensors.reports import Report
from edgefleet.node.sensors.stages import OutboxAdded, PublisherQueue, Reply, Stop
from edgefleet.plumbing.mqtt_link import MqttLink
from edgefleet.plumbing.mqtt_rpc import reply
from edgefleet.proto.error_codes import ErrorCode

log = logging.getLogger("edgefleet.node.sensors")

RETRY_S = 0.2  # how often rows left in the outbox (broker away, disk full) are tried again


class Publisher:
    def __init__(self, link: MqttLink, ledger: SensorLedger, inbox: PublisherQueue, report: Report) -> None:
        self.link, self.ledger, self.inbox, self.report = link, ledger, inbox, report
        self._published: set[int] = set()  # outbox rows published whose deletion waits for room
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-sensor-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.inbox.put(Stop())
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=RETRY_S)
            except queue.Empty:
                item = OutboxAdded()  # rows may wait for the broker or for room: try again
            if isinstance(item, Stop):
                return
            try:
                if isinstance(item, Reply):
                    self._reply(item)
                else:
                    self._drain_outbox()
            except Exception:
                log.exception("publishing failed")

    def _reply(self, item: Reply) -> None:
        if not reply(self.link, item.target, item.payload):
            self.report(
                ErrorCode.REPLY_FAILED,
                f"the answer to a request on {item.request_topic} could not be sent to {item.target.topic[:200]}",
                item.request_topic,
            )

    def _drain_outbox(self) -> None:
        while self.link.connected.is_set() and not self._stopping.is_set():
            rows = self.ledger.outbox_batch(64)
            if not rows:
                return
            for row in rows:
                if row.seq not in self._published:
                    if not self.link.publish_wait(row.topic, row.payload, timeout=10.0):
                        return  # the broker went away: the row stays and goes out first when it is back
                    self._published.add(row.seq)
                try:
                    self.ledger.outbox_delete(row.seq)
                except StorageFull:  # published already: deleted when there is room, not sent again
                    return
                self._published.discard(row.seq)
