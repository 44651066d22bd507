"""The front door's Prometheus metrics, in a registry of their own (never the global one)."""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgefleet.orchestrator.fleet_view import FleetSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_WAIT = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _FleetCollector(Collector):
    """Nodes by state, read from the fleet snapshot at scrape time; `cooling` from the router."""

    def __init__(self, snapshot: Callable[[], FleetSnapshot], cooling: Callable[[float], list[str]]) -> None:
        self._snapshot, self._cooling = snapshot, cooling

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fleet = self._snapshot()
        states = Tally({"online": 0, "offline": 0, "failed": 0})
        states.update(n.state for n in fleet.nodes.values())
        g = GaugeMetricFamily("edgefleet_fleet_nodes", "Nodes in the fleet view by state", labels=["state"])
        for state, count in sorted(states.items()):
            g.add_metric([state], count)
        g.add_metric(["cooling"], len(self._cooling(time.time())))
        yield g


class FrontDoorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgefleet_front_door_requests_total",
            "Requests through the front door by API, serving node and outcome",
            ["api", "node", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "edgefleet_front_door_retries_total",
            "Attempts sent again to another node before the first token, by reason",
            ["reason"],
            registry=r,
        )
        self.failovers = Counter(
            "edgefleet_front_door_failovers_total",
            "Requests moved off a node that failed before the first token",
            ["node"],
            registry=r,
        )
        self.cooldowns = Counter(
            "edgefleet_front_door_cooldowns_total", "Nodes taken out of rotation for a while", ["node"], registry=r
        )
        self.buffer_depth = Gauge("edgefleet_front_door_buffer_depth", "Requests waiting for a free slot", registry=r)
        self.buffer_wait = Histogram(
            "edgefleet_front_door_buffer_wait_seconds",
            "Time requests waited in the buffer for a free slot",
            buckets=_WAIT,
            registry=r,
        )
        self.added_latency = Histogram(
            "edgefleet_front_door_added_latency_seconds",
            "The front door's own time before a request is sent to a node (parsing, routing, claiming; "
            "not the buffer wait)",
            buckets=_FAST,
            registry=r,
        )
        self.in_flight = Gauge(
            "edgefleet_front_door_in_flight", "Requests in flight through the front door by node", ["node"], registry=r
        )

        self.key_requests = Counter(
            "edgefleet_front_door_key_requests_total", "Requests let in per API key (its name)", ["key"], registry=r
        )
        self.key_tokens = Counter(
            "edgefleet_front_door_key_tokens_total", "Tokens (prompt and completion) per API key", ["key"], registry=r
        )
        self.auth_refused = Counter(
            "edgefleet_front_door_auth_refused_total",
            "Requests refused by the API-key check, by HTTP status (401, 403, 429)",
            ["status"],
            registry=r,
        )

    def watch_fleet(self, snapshot: Callable[[], FleetSnapshot], cooling: Callable[[float], list[str]]) -> None:
        self.registry.register(_FleetCollector(snapshot, cooling))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
