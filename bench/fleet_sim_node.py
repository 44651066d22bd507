"""One simulated node: what it says on the broker, built from the contract's own models only
(proto/payloads.py, proto/topics.py), the way a real node says it (node/control/agent.py).

- birth: `online`, retained, QoS 1, with its info (profile, groups, model name + sha256, versions;
  `versions["sim_epoch"]` says which announce round it belongs to); will: `offline` (`connection lost`);
- reported state (retained, QoS 1): the generation applied per target key, the template versions in
  effect (its groups' templates, then its own), its groups;
- telemetry (QoS 0): plausible slot, queue, token-rate, temperature and memory figures.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edgefleet.proto.payloads import (
    DesiredState,
    ModelRef,
    NodeInfoPayload,
    NodeStatus,
    ReportedState,
    Telemetry,
    merged,
)
from edgefleet.proto.topics import Topics

MODEL = ModelRef(
    name="SmolLM2-135M-Instruct",
    quantization="Q4_1",
    sha256=hashlib.sha256(b"SmolLM2-135M-Instruct-Q4_1.gguf").hexdigest(),
)


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    site: str = "lab"
    nodes: int = 100
    prefix: str = "sim"  # node ids `<prefix>-00000` …
    group: str = "sim"  # every node's group: a push to it reaches them all
    zones: int = 0  # > 0: each node is also in `<group>-z<k>`, k = its index modulo `zones`
    profiles: tuple[str, ...] = ("x86-dev",)  # given out in turn
    telemetry_s: float = 5.0
    jitter: float = 0.2  # telemetry intervals vary by ± this fraction
    spread_s: float = 0.0  # the first connects spread over this long; 0: all at once (a site power cut)
    keepalive: int = 30
    backoff_min_s: float = 0.5
    backoff_max_s: float = 15.0
    connect_timeout_s: float = 20.0  # a CONNECT not answered by then is dropped and tried again
    reannounce_on_orchestrator: bool = True  # off: nodes from before they re-announced (the "before" figures)
    reannounce_jitter_s: float = 0.0  # a real node answers at once
    tls: tuple[str, str, str] | None = None  # (CA file, certificate, key): mqtts with a client certificate
    seed: int = 1


class SimNode:
    """One simulated node: its identity, what it applied, and its current paho client (a fresh one per
    connection attempt, so nothing queued for an old connection is sent on a new one)."""

    def __init__(self, cfg: SimConfig, topics: Topics, index: int) -> None:
        self.node_id = f"{cfg.prefix}-{index:05d}"
        self.groups = [cfg.group, *([f"{cfg.group}-z{index % cfg.zones}"] if cfg.zones else [])]
        self.profile = cfg.profiles[index % len(cfg.profiles)]
        self.topics = topics
        self.docs: dict[str, DesiredState] = {}  # target key → the newest document applied
        self.applied_at: dict[str, float] = {}  # target key → when its newest generation was applied
        self.client: mqtt.Client | None = None
        self.connected = False
        self.conn_no = 0  # bumped on every connect: timers of an older connection do nothing
        self.connecting_since = 0.0  # monotonic time of the pending attempt, 0 when none
        self.failures = 0  # attempts in a row that did not end connected
        self.retry_pending = False

    def birth(self, epoch: int) -> bytes:
        info = NodeInfoPayload(
            profile=self.profile,
            groups=self.groups,
            model=MODEL,
            versions={"edgefleet": "simulated", "sim_epoch": str(epoch)},
            insecure=True,
        )
        return NodeStatus(node_id=self.node_id, state="online", info=info).dumps()

    def will(self) -> bytes:
        return NodeStatus(node_id=self.node_id, state="offline", reason="connection lost").dumps()

    def reported(self) -> bytes:
        templates = merged(self.docs, self.node_id, self.groups, "templates")
        return ReportedState(
            node_id=self.node_id,
            generations={k: d.generation for k, d in self.docs.items()},
            templates={name: str(spec.version) for name, spec in templates.items()},
            groups=self.groups,
        ).dumps()

    def telemetry(self, rng: random.Random) -> bytes:
        busy = rng.randint(0, 4)
        return Telemetry(
            node_id=self.node_id,
            queue_depth=rng.randint(0, 3),
            slots_busy=busy,
            slots_total=4,
            slots_available=4 - busy,
            tokens_per_second=round(rng.uniform(0, 150), 1),
            temperature_c=round(rng.uniform(40, 70), 1),
            throttled=False,
            shedding=False,
            rss_bytes=400 * 2**20 + rng.randint(0, 50 * 2**20),
        ).dumps()

    def subscriptions(self, reannounce: bool) -> list[tuple[str, int]]:
        subs = [(self.topics.desired_node(self.node_id), 1)]
        subs += [(self.topics.desired_group(g), 1) for g in self.groups]
        if reannounce:
            subs.append((self.topics.orchestrator_status(), 1))
        return subs
