"""What edgefleet adds between a sensor message and its answer, beyond the model's own time.

Starts a real Mosquitto broker, an orchestrator and one node (`edgefleet-node serve --profile x86-dev`)
in a temporary directory, pushes a template and a rule targeted at the node, then a sensor client
publishes QoS 1 JSON readings at a steady rate (open loop: scheduled by time, never waiting for
answers) while a reader subscribed to `edgefleet/lab/results/#` records when each answer arrives.

Per answered message:
  end_to_end_ms = answer arrived at the reader - reading published by the sensor
  model_ms      = the result's `total_ms` (engine: submit -> finish, queue wait included)
  overhead_ms   = end_to_end_ms - model_ms
split, without touching the node, by the result's `ts` (wall clock when the node built the answer, on
its answer thread, before the outbox commit) and the inbox row's `received_at` in the node's
`sensors.db` (wall clock when its MQTT thread got the message, before the inbox commit):
  sent->node rx = received_at - published        (sensor -> broker -> node's MQTT network thread)
  node rx->eng  = ts - total_ms - received_at     (inbox commit, ack, wake the answer thread, claim
                  commit, template and tokenizer; plus the engine -> answer thread hand-off at the end)
  ts->rx        = arrived - ts                    (outbox commit, publisher, broker -> reader)
which add up to overhead_ms (up to the 1 ms rounding of `ts`).

Also measured, for scale: a plain QoS 1 publish -> receive between two clients on the same broker
(one hop; a sensor answer makes two), and a SQLite WAL `synchronous=FULL` insert+commit in the
directory the node's `sensors.db` lives in (the node commits 4 times per message: accept, claim,
complete, outbox delete).

Secure by default, as the product is: a TLS broker that requires client certificates (the test
site PKI of tests/site_identity.py), the node with its own node certificate, the orchestrator with its
bundle, and the bench's own MQTT clients (sensor, reader, broker hop) over TLS as the `harness`
operator. `--insecure`: a plaintext broker and EDGEFLEET_INSECURE=1 for the node, the orchestrator and
the CLI (the cost of TLS is the difference).

    .venv/bin/python bench/sensor_latency.py [--rate 10] [--count 300] [--max-tokens 4] [--insecure] [--dump FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import site_identity  # noqa: E402
from tests.conftest import NodeProcess  # noqa: E402
from tests.mqtt_support import Mosquitto, Orchestrator, fleet  # noqa: E402
from tests.site_identity import INSECURE_ENV  # noqa: E402

TEMPLATE = "Sensor {{ sensor }} reads {{ rms }} mm/s RMS. Is this a bearing fault? Answer yes or no."
RESULTS = "edgefleet/lab/results/#"
NODE_ID = "bench-1"
TARGET_OVERHEAD_MS = 20.0
WARMUP = 10
DUMPED = ("ts", "queue_ms", "ttft_ms", "total_ms", "prompt_tokens", "completion_tokens")

_OFFSET = time.time() - time.perf_counter()


def now_wall() -> float:
    """Wall-clock seconds with perf_counter resolution (the node's `ts` is time.time())."""
    return time.perf_counter() + _OFFSET


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<14} median {pct(values, 50):8.1f}  p90 {pct(values, 90):8.1f}  p95 {pct(values, 95):8.1f}  "
        f"p99 {pct(values, 99):8.1f}  "
        f"max {max(values, default=float('nan')):8.1f}  ms"
    )


class Reader:
    """Records the arrival time of every message on a topic filter."""

    def __init__(self, broker: Mosquitto, topic_filter: str) -> None:
        self.lock = threading.Lock()
        self.got: dict[str, tuple[float, dict[str, Any]]] = {}
        self.raw: list[tuple[float, bytes]] = []
        self.c = broker.client(f"b-{uuid.uuid4().hex[:8]}")  # TLS as the harness operator unless insecure
        subscribed = threading.Event()
        self.c.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {topic_filter}")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        t = now_wall()
        with self.lock:
            self.raw.append((t, bytes(msg.payload)))
            try:
                r = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(r, dict) and "source_id" in r:
                self.got.setdefault(str(r["source_id"]), (t, r))  # a re-sent answer keeps the first arrival

    def answered(self, ids: set[str]) -> int:
        with self.lock:
            return len(ids & set(self.got))

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def publisher(broker: Mosquitto) -> mqtt.Client:
    c = broker.client(f"s-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("sensor client could not connect")
    return c


def reading(i: int, prefix: str) -> bytes:
    return json.dumps({"id": f"{prefix}-{i}", "rms": round(2 + (i % 70) / 10, 1)}).encode()


def send_open_loop(sensor: mqtt.Client, prefix: str, count: int, rate: float) -> tuple[dict[str, float], float]:
    """Publish `count` readings at `rate`/s by the clock; returns send times and the worst lateness (ms)."""
    sent: dict[str, float] = {}
    late = 0.0
    t0 = time.perf_counter() + 0.05
    for i in range(count):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        late = max(late, (time.perf_counter() - due) * 1000)
        sent[f"{prefix}-{i}"] = now_wall()
        sensor.publish(f"bench/s{i % 5}/vibration", reading(i, prefix), qos=1)
    return sent, late


def wait_answers(reader: Reader, ids: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and reader.answered(ids) < len(ids):
        time.sleep(0.1)


def broker_hop(broker: Mosquitto, count: int, rate: float) -> list[float]:
    """Plain QoS 1 publish -> receive between two clients, open loop at `rate`/s (ms)."""
    topic = f"bench/hop/{uuid.uuid4().hex[:6]}"
    reader = Reader(broker, topic)
    sensor = publisher(broker)
    try:
        sent: dict[int, float] = {}
        t0 = time.perf_counter() + 0.05
        for i in range(count):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent[i] = now_wall()
            sensor.publish(topic, json.dumps({"i": i}).encode(), qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(reader.raw) < count:
            time.sleep(0.05)
        with reader.lock:
            return [(t - sent[json.loads(p)["i"]]) * 1000 for t, p in reader.raw]
    finally:
        sensor.loop_stop()
        sensor.disconnect()
        reader.close()


def sqlite_commit_ms(directory: Path, n: int = 200) -> list[float]:
    """Insert + commit of one ~200-byte row, WAL and synchronous=FULL, as the node's ledger does (ms)."""
    path = directory / "fsync-probe.db"
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, at REAL NOT NULL)")
        out = []
        for _ in range(n):
            t = time.perf_counter()
            with conn:
                conn.execute("INSERT INTO t (payload, at) VALUES (?, ?)", [os.urandom(200), time.time()])
            out.append((time.perf_counter() - t) * 1000)
        return out
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def inbox_received(db: Path) -> dict[str, float]:
    """Message id -> when the node's MQTT thread received it (the ledger's `received_at`), read-only."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        return {str(i): float(t) for i, t in conn.execute("SELECT id, received_at FROM inbox WHERE rule = 'bench'")}
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = 0.0
    return out


def push_setup(broker: Mosquitto, tmp: Path, max_tokens: int) -> None:
    t = tmp / "vibe.j2"
    t.write_text(TEMPLATE)
    target = f"node:{NODE_ID}"
    deadline = time.monotonic() + 30
    while True:  # the orchestrator must have heard the node register first
        r = fleet(broker, "fleet", "push-template", str(t), "--name", "vibe", "--version", "1", "--target", target)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"push-template failed: {r.stderr}")
        time.sleep(0.5)
    rule = {
        "name": "bench",
        "version": "1",
        "topic_filter": "bench/+/vibration",
        "template": "vibe",
        "variables": {"sensor": "topic[1]", "rms": "payload.rms"},
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    f = tmp / "rule.yaml"
    f.write_text(yaml.safe_dump(rule))
    r = fleet(broker, "fleet", "push-rule", str(f), "--target", target)
    if r.returncode != 0:
        raise RuntimeError(f"push-rule failed: {r.stderr}")


def first_answer(sensor: mqtt.Client, reader: Reader, timeout: float = 60) -> None:
    """Re-send a probe until the node answers: it subscribes when the desired state reaches it."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        sensor.publish(f"bench/s{i % 5}/vibration", reading(i, "probe"), qos=1)
        i += 1
        t = time.monotonic() + 1.0
        while time.monotonic() < t:
            with reader.lock:
                if any(k.startswith("probe-") for k in reader.got):
                    return
            time.sleep(0.05)
    raise TimeoutError("the node never answered a probe message")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rate", type=float, default=10.0, help="sensor messages per second (default 10)")
    p.add_argument("--count", type=int, default=300, help="measured messages (default 300)")
    p.add_argument("--max-tokens", type=int, default=4, help="the rule's max_tokens (default 4)")
    p.add_argument("--hop-count", type=int, default=200, help="messages of the plain broker hop measure (default 200)")
    p.add_argument(
        "--broker-nagle",
        action="store_true",
        help="for comparison: a broker without `set_tcp_nodelay true` (Mosquitto default; edgefleet configs set it)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext broker and EDGEFLEET_INSECURE=1 everywhere (default: TLS with client certificates)",
    )
    p.add_argument("--dump", type=Path, help="write one JSON line per answered message here (for a closer look)")
    args = p.parse_args(argv)

    load = os.getloadavg()
    mode = "insecure (plaintext MQTT, EDGEFLEET_INSECURE=1)" if args.insecure else "secure (TLS, client certificates)"
    print(f"mode: {mode}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="sensor-latency-") as tmp_s:
        tmp = Path(tmp_s)
        broker: Mosquitto | None = None
        orch: Orchestrator | None = None
        node: NodeProcess | None = None
        reader: Reader | None = None
        sensor: mqtt.Client | None = None
        try:
            broker = Mosquitto(tmp / "broker", insecure=args.insecure)
            if args.broker_nagle:
                broker.conf.write_text(broker.conf.read_text().replace("set_tcp_nodelay true\n", ""))
                broker.restart()
            orch = Orchestrator(tmp, broker)
            env = {
                "EDGEFLEET_MQTT_URL": broker.url,
                "EDGEFLEET_SITE": "lab",
                "EDGEFLEET_GROUPS": "vib",
                "EDGEFLEET_LOG_LEVEL": "WARNING",
                # the profile's compute threads (x86-dev: 2, with the thread governor), as a node runs;
                # NodeProcess pins 1 for test runners, too slow for 10 msg/s (~180 ms CPU a message)
                "EDGEFLEET_THREADS": "0",
                **(INSECURE_ENV if args.insecure else {}),  # secure: NodeProcess issues its node certificate
            }
            node = NodeProcess(tmp, profile="x86-dev", env=env, node_id=NODE_ID)
            node.wait_serving()
            try:
                push_setup(broker, tmp, args.max_tokens)
            except RuntimeError:
                exited = orch.proc.poll() if orch.proc is not None else None
                print(f"orchestrator (exit status {exited}) log tail:\n{orch.log_path.read_text()[-3000:]}")
                raise
            reader = Reader(broker, RESULTS)
            sensor = publisher(broker)
            first_answer(sensor, reader)

            warm, _ = send_open_loop(sensor, "w", WARMUP, args.rate)
            wait_answers(reader, set(warm), 30)

            procs = {"node": psutil.Process(node.proc.pid)}
            if broker.proc is not None:
                procs["mosquitto"] = psutil.Process(broker.proc.pid)
            procs["bench"] = psutil.Process()
            cpu0, busy0, wall0 = cpu_seconds(procs), psutil.cpu_times(), time.perf_counter()
            sent, late = send_open_loop(sensor, "b", args.count, args.rate)
            wait_answers(reader, set(sent), 30 + args.count / args.rate)
            cpu1, busy1, wall = cpu_seconds(procs), psutil.cpu_times(), time.perf_counter() - wall0
            busy = (sum(busy1) - busy1.idle - busy1.iowait) - (sum(busy0) - busy0.idle - busy0.iowait)

            received = inbox_received(node.data_dir / "sensors.db")
            e2e, model, queue, overhead, to_node, to_engine, out = [], [], [], [], [], [], []
            errors = 0
            rows: list[dict[str, Any]] = []
            with reader.lock:
                got = dict(reader.got)
            for sid, t_sent in sent.items():
                if sid not in got:
                    continue
                t_arr, r = got[sid]
                if not r.get("ok"):
                    errors += 1
                    continue
                end_to_end = (t_arr - t_sent) * 1000
                total = float(r["total_ms"])
                e2e.append(end_to_end)
                model.append(total)
                queue.append(float(r["queue_ms"]))
                overhead.append(end_to_end - total)
                if sid in received:
                    to_node.append((received[sid] - t_sent) * 1000)
                    to_engine.append((float(r["ts"]) - total / 1000 - received[sid]) * 1000)
                out.append((t_arr - float(r["ts"])) * 1000)
                rows.append({"id": sid, "sent": t_sent, "received_at": received.get(sid), "arrived": t_arr})
                rows[-1].update({k: r[k] for k in DUMPED})
            if args.dump:
                args.dump.write_text("".join(json.dumps(row) + "\n" for row in rows))

            hop = broker_hop(broker, args.hop_count, args.rate * 5)
            commit = sqlite_commit_ms(node.data_dir)

            print(
                f"{'insecure' if args.insecure else 'secure (TLS)'}: rate {args.rate:g} msg/s, "
                f"max_tokens {args.max_tokens}, 1 node (x86-dev), "
                f"{WARMUP} warm-up messages not counted; send schedule worst lateness {late:.1f} ms"
                + ("; broker without set_tcp_nodelay" if args.broker_nagle else "")
            )
            print(f"answered       {len(e2e)}/{len(sent)} ok" + (f", {errors} error results" if errors else ""))
            if not e2e:
                print("no answers: nothing to measure")
                print(f"node log tail:\n{node.log()[-2000:]}")
                return 0
            print(summary("end_to_end", e2e))
            print(summary("model (total)", model))
            print(summary("queue_ms", queue))
            print(summary("overhead", overhead))
            print(summary("  sent->node rx", to_node))
            print(summary("  node rx->eng", to_engine))
            print(summary("  ts->rx", out))
            print(summary("broker hop", hop) + f"  (plain QoS 1 publish->receive, {len(hop)} msgs)")
            print(summary("sqlite commit", commit) + "  (WAL, synchronous=FULL, insert+commit, node's data dir)")
            used = {k: cpu1[k] - cpu0[k] for k in cpu0}
            print(
                "cpu during run "
                + "  ".join(f"{k} {v / wall:.0%}" for k, v in used.items())
                + f"  machine {busy / wall / (os.cpu_count() or 1):.0%} of {os.cpu_count()} CPUs"
                + f"  (node {used['node'] / max(len(e2e), 1) * 1000:.1f} ms CPU per message)"
            )
            load = os.getloadavg()
            print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            med = pct(overhead, 50)
            verdict = "PASS" if med <= TARGET_OVERHEAD_MS else "FAIL"
            print(f"overhead median {med:.1f} ms (target <= {TARGET_OVERHEAD_MS:g} ms): {verdict}")
        finally:
            if sensor is not None:
                sensor.loop_stop()
                sensor.disconnect()
            if reader is not None:
                reader.close()
            if node is not None:
                node.stop()
            if orch is not None:
                orch.stop()
            if broker is not None:
                broker.stop()
            site_identity.remove()  # the temporary site PKI
    return 0


if __name__ == "__main__":
    sys.exit(main())
