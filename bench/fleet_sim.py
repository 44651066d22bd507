"""Simulated nodes that speak only the MQTT contract: thousands of them in one process, on one thread.

Each simulated node (bench/fleet_sim_node.py) looks on the broker like a real one (node/control/agent.py),
built from the contract's own models (proto/payloads.py, proto/topics.py) and nothing else:
- its own MQTT 5 connection (client id `node-<site>-<node>`, as a real node's) with a will: `offline`
  (`connection lost`), retained, QoS 1;
- on every connect: subscribes to `desired/node/<id>` and `desired/group/<g>` of its groups, then
  publishes a retained `online` birth with its info (profile, groups, model name + sha256, versions;
  `versions["sim_epoch"]` says which announce round it belongs to) and its retained reported state;
- telemetry (QoS 0) every `telemetry_s` seconds, jittered, the first one at a random point of the
  first interval;
- desired state echoed as applied: a newer generation of a target replaces that target's document and
  the node publishes its reported state (generations per target key, template versions in effect,
  groups), as a real node does after applying it. Signatures are not verified (a real node with a
  pinned site key would); cleared (empty) retained documents are ignored, as a real node does;
- reconnect storms: a lost connection is retried with exponential backoff and full jitter, and the node
  announces itself again on every connect; and, as a real node does (`reannounce_on_orchestrator`, on by
  default), whenever the orchestrator says `online` live (not its retained status), so an orchestrator that
  lost a birth gets it again (Home Assistant's discovery pattern), after up to `reannounce_jitter_s`.

Benchmarks and the scale test only: never a stand-in for a node in a functional test (team rule).

One selector loop (epoll) drives every paho client through paho's socket callbacks and
`loop_read` / `loop_write` / `loop_misc`: no thread per node. Connects are plain blocking TCP connects
(quick on a LAN; refused at once while the broker is down). 5,000 nodes need 5,000 sockets: see
`raise_fd_limit`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import itertools
import logging
import random
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.fleet_sim_node import SimConfig, SimNode
from edgefleet.proto.payloads import DesiredState, NodeStatus, OrchestratorStatus, PayloadError, parse_payload
from edgefleet.proto.topics import Topics

__all__ = ["FleetSim", "SimConfig", "SimNode", "raise_fd_limit"]

log = logging.getLogger("bench.fleet_sim")

HOUSEKEEPING_S = 2.0  # keepalive pings and stuck connects are looked at this often


class FleetSim:
    """N simulated nodes on one selector loop in a background thread. Every paho call happens on that
    thread; other threads read the counters and `applied`, and ask for changes through `call_soon`."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.topics = Topics.for_site(cfg.site)
        self.nodes = [SimNode(cfg, self.topics, i) for i in range(cfg.nodes)]
        self.epoch = 1
        self.counts: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(cfg.seed)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._to_flush: list[SimNode] = []
        self._writing: set[SimNode] = set()
        self._stopping = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sim", daemon=True)
        self._tls: ssl.SSLContext | None = None  # one context for every connection (loaded once)
        if cfg.tls is not None:
            ca, cert, key = cfg.tls
            self._tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            self._tls.load_cert_chain(cert, key)

    # -- the API for other threads ----------------------------------------------------------------
    def start(self) -> None:
        now = time.monotonic()
        n = len(self.nodes)
        for i, node in enumerate(self.nodes):
            self._at(now + self.cfg.spread_s * i / max(n, 1), functools.partial(self._connect, node))
        self._thread.start()

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def set_epoch(self, epoch: int) -> None:
        """Births from now on carry `sim_epoch` = `epoch` (how a bench tells a fresh announce from an old one)."""
        self.call_soon(lambda: setattr(self, "epoch", epoch))

    def announce_all(self) -> None:
        """Every connected node publishes its birth and reported state again (as after a reconnect)."""
        self.call_soon(self._announce_all)

    @property
    def connected(self) -> int:
        return sum(1 for n in self.nodes if n.connected)

    def applied(self, target_key: str, generation: int) -> int:
        """How many nodes applied `generation` (or newer) of `target_key`."""
        return sum(1 for n in self.nodes if (d := n.docs.get(target_key)) is not None and d.generation >= generation)

    def newest_generation(self, target_key: str) -> int:
        return max((d.generation for n in self.nodes if (d := n.docs.get(target_key)) is not None), default=0)

    def stop(self, goodbye: bool = True, timeout: float = 10.0) -> None:
        """Leave: with `goodbye`, every connected node says `offline` (retained, `shutdown`) and disconnects
        cleanly (no will); without it the sockets are just closed (the broker sends the wills)."""
        if not self._thread.is_alive():
            return
        self.call_soon(lambda: self._leave(goodbye))
        self._done.wait(timeout)
        self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        try:
            while True:
                if self._stopping and not self._writing and not self._to_flush and not self._open_sockets():
                    break
                now = time.monotonic()
                delay = min(1.0, max(0.0, self._timers[0][0] - now)) if self._timers else 1.0
                for key, mask in self._sel.select(0 if self._to_flush or self._calls else delay):
                    node = key.data
                    if node is None:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                        continue
                    client = node.client
                    if client is None or client.socket() is not key.fileobj:
                        continue
                    if mask & selectors.EVENT_READ:
                        client.loop_read()
                    if mask & selectors.EVENT_WRITE and client.socket() is key.fileobj:
                        client.loop_write()
                while self._calls:
                    self._calls.popleft()()
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    heapq.heappop(self._timers)[2]()
                self._flush()
                if now >= next_housekeeping:
                    next_housekeeping = now + HOUSEKEEPING_S
                    self._housekeeping(now)
        except Exception:
            log.exception("fleet simulator loop failed")
            raise
        finally:
            self._done.set()

    def _open_sockets(self) -> bool:
        return any(n.client is not None and n.client.socket() is not None for n in self.nodes)

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), fn))

    def _flush(self) -> None:
        """Write what paho queued; a socket that could not take it all waits for EVENT_WRITE."""
        pending, self._to_flush = self._to_flush, []
        for node in pending:
            client = node.client
            if client is None or client.socket() is None:
                continue
            client.loop_write()
            sock = client.socket()
            if sock is not None and client.want_write() and node not in self._writing:
                self._writing.add(node)
                self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, node)

    def _housekeeping(self, now: float) -> None:
        for node in self.nodes:
            client = node.client
            if client is None:
                continue
            if node.connected:
                client.loop_misc()  # keepalive pings; a broker that stopped answering is dropped
            elif node.connecting_since and now - node.connecting_since > self.cfg.connect_timeout_s:
                self.counts["connect_timeouts"] += 1
                self._drop(node)
                self._retry(node)

    # -- paho's socket callbacks (userdata: the SimNode) -----------------------------------------
    def _sock_open(self, _c: mqtt.Client, node: SimNode, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, node)

    def _sock_close(self, _c: mqtt.Client, node: SimNode, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        self._writing.discard(node)

    def _want_write(self, _c: mqtt.Client, node: SimNode, _sock: Any) -> None:
        self._to_flush.append(node)

    def _no_write(self, _c: mqtt.Client, node: SimNode, sock: Any) -> None:
        if node in self._writing:
            self._writing.discard(node)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.modify(sock, selectors.EVENT_READ, node)

    # -- connecting -------------------------------------------------------------------------------
    def _new_client(self, node: SimNode) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"node-{self.cfg.site}-{node.node_id}",
            protocol=mqtt.MQTTv5,
            userdata=node,
        )
        if self._tls is not None:
            c.tls_set_context(self._tls)
        c.connect_timeout = 2.0  # a blocking TCP connect stalls every node: a full accept queue is retried later
        c.will_set(self.topics.node_status(node.node_id), node.will(), qos=1, retain=True)
        c.on_socket_open = self._sock_open
        c.on_socket_close = self._sock_close
        c.on_socket_register_write = self._want_write
        c.on_socket_unregister_write = self._no_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    def _connect(self, node: SimNode) -> None:
        node.retry_pending = False
        if self._stopping:
            return
        self._drop(node)
        node.client = self._new_client(node)
        node.connecting_since = time.monotonic()
        self.counts["connect_attempts"] += 1
        try:
            node.client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, clean_start=True)
        except OSError:
            self.counts["connect_refused"] += 1
            self._drop(node)
            self._retry(node)

    def _drop(self, node: SimNode) -> None:
        """Close the node's socket without a DISCONNECT (as a lost link would)."""
        client, node.client = node.client, None
        node.connected, node.connecting_since = False, 0.0
        sock = client.socket() if client is not None else None
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            self._writing.discard(node)
            with contextlib.suppress(OSError):
                sock.close()

    def _retry(self, node: SimNode) -> None:
        """Full-jitter exponential backoff: min + uniform(0, min(max, min * 2^failures))."""
        if self._stopping or node.retry_pending:
            return
        node.failures += 1
        window = min(self.cfg.backoff_max_s, self.cfg.backoff_min_s * 2 ** min(node.failures, 16))
        node.retry_pending = True
        self._at(time.monotonic() + self.cfg.backoff_min_s + self._rng.uniform(0, window), lambda: self._connect(node))

    def _on_connect(self, client: mqtt.Client, node: SimNode, _flags: Any, reason: Any, _props: Any) -> None:
        if client is not node.client or reason.is_failure:
            self.counts["connect_failed"] += 1
            return  # the broker closes the link; `_on_disconnect` tries again
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        node.connected, node.connecting_since, node.failures = True, 0.0, 0
        node.conn_no += 1
        self.counts["connects"] += 1
        client.subscribe(node.subscriptions(self.cfg.reannounce_on_orchestrator))
        self._announce(node, node.conn_no)
        conn_no = node.conn_no
        self._at(time.monotonic() + self._rng.uniform(0, self.cfg.telemetry_s), lambda: self._telemetry(node, conn_no))

    def _on_disconnect(self, client: mqtt.Client, node: SimNode, _flags: Any, _reason: Any, _props: Any) -> None:
        if client is not node.client:
            return
        if node.connected:
            self.counts["disconnects"] += 1
        node.connected, node.connecting_since = False, 0.0
        self._retry(node)

    def _announce_all(self) -> None:
        for node in self.nodes:
            self._announce(node, node.conn_no)

    def _announce(self, node: SimNode, conn_no: int) -> None:
        client = node.client
        if client is None or not node.connected or node.conn_no != conn_no:
            return
        client.publish(self.topics.node_status(node.node_id), node.birth(self.epoch), qos=1, retain=True)
        client.publish(self.topics.node_reported(node.node_id), node.reported(), qos=1, retain=True)
        self.counts["births"] += 1

    def _telemetry(self, node: SimNode, conn_no: int) -> None:
        client = node.client
        if client is None or not node.connected or node.conn_no != conn_no:
            return
        client.publish(self.topics.node_telemetry(node.node_id), node.telemetry(self._rng), qos=0)
        self.counts["telemetry"] += 1
        interval = self.cfg.telemetry_s * self._rng.uniform(1 - self.cfg.jitter, 1 + self.cfg.jitter)
        self._at(time.monotonic() + interval, lambda: self._telemetry(node, conn_no))

    # -- what the broker sends --------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, node: SimNode, msg: mqtt.MQTTMessage) -> None:
        if client is not node.client or not msg.payload:  # empty: a cleared retained document
            return
        if msg.topic == self.topics.orchestrator_status():
            if not msg.retain:  # the retained one comes on every connect, right after this node's birth
                self._on_orchestrator(node, bytes(msg.payload))
            return
        try:
            doc = parse_payload(DesiredState, bytes(msg.payload))
        except PayloadError:
            self.counts["desired_refused"] += 1
            return
        target = (doc.target.kind, doc.target.name)
        if doc.site != self.cfg.site or self.topics.desired_target(msg.topic) != target:
            self.counts["desired_refused"] += 1
            return
        held = node.docs.get(doc.target.key)
        if held is None or doc.generation > held.generation:
            node.docs[doc.target.key] = doc
            node.applied_at[doc.target.key] = time.time()
            self.counts["desired_applied"] += 1
        client.publish(self.topics.node_reported(node.node_id), node.reported(), qos=1, retain=True)
        self.counts["reported"] += 1

    def _on_orchestrator(self, node: SimNode, payload: bytes) -> None:
        try:
            status = parse_payload(OrchestratorStatus, payload)
        except PayloadError:
            return
        if status.state == "online":
            conn_no = node.conn_no
            self.counts["reannounces"] += 1
            if not self.cfg.reannounce_jitter_s:
                self._announce(node, conn_no)
                return
            delay = self._rng.uniform(0, self.cfg.reannounce_jitter_s)
            self._at(time.monotonic() + delay, lambda: self._announce(node, conn_no))

    def _leave(self, goodbye: bool) -> None:
        self._stopping = True
        self._timers.clear()
        for node in self.nodes:
            client = node.client
            if client is None:
                continue
            if goodbye and node.connected:
                bye = NodeStatus(node_id=node.node_id, state="offline", reason="shutdown").dumps()
                client.publish(self.topics.node_status(node.node_id), bye, qos=1, retain=True)
                client.disconnect()  # written after the goodbye; paho closes the socket once it is sent
                node.connected = False
            else:
                self._drop(node)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by the processes it starts) to `wanted`: the soft
    limit, and the hard one when it is lower (root may). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted, max(hard, wanted) if hard != resource.RLIM_INFINITY else hard)
        )
        return wanted
    except (ValueError, OSError):  # not allowed to raise the hard limit: as far as it goes
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
