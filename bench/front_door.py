"""The orchestrator's front door against straight-to-the-node, on a real two-node site.

    .venv/bin/python -m bench.front_door [--requests 40] [--throughput-s 30] [--failover-s 60 --kill-at-s 20]
                                         [--only overhead] [--insecure]

Starts Mosquitto, two nodes (x86-dev, one compute thread each) and an orchestrator with its front
door on free ports, then prints:
1. overhead: TTFT and total latency (median, p99), front door vs direct, at concurrency 1 and 4;
2. throughput at concurrency 8 (completion tokens/s), front door vs direct, and the ratio;
3. affinity on vs off: prefix-cache hits (usage.cached_prompt_tokens) and TTFT for template traffic
   (`--templates` > nodes: several templates per node, each keeping its own slot's prefix);
4. failover: closed loop c=4, one node SIGKILLed part way: requests started after it left the
   rotation that failed; requests in flight at the kill (completed elsewhere / error naming the
   node); time from the kill to out of rotation.
Direct traffic alternates between the two nodes (a client that spreads by itself).

Secure by default, as the product is: a TLS broker requiring client certificates, each node with its
own node certificate (mutual TLS on gRPC), the orchestrator with its bundle (TLS on the front door's
gRPC and HTTPS, mutual TLS to the nodes), all from a site PKI made for the run (bench/site_security.py);
the bench's clients show the `harness` operator certificate, both to the nodes (checking each node's
name) and to the front door. `--insecure`: plaintext everywhere (EDGEFLEET_INSECURE=1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.processes import free_port, stop_process
from edgefleet.orchestrator.api_keys import KeyStore
from edgefleet.orchestrator.front_door.router import rendezvous_weight
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from tests.mqtt_support import Mosquitto  # noqa: E402

BIN = ROOT / ".venv" / "bin"
# greedy and counting: every answer runs to max_tokens, so both paths do the same work
PROMPT = "Count from 1 to 500: 1, 2, 3,"
TEMPLATE = "Sensor {{ sensor }} reports {{ reading }}. Is this a fault? Answer yes or no, then say why."
SYSTEM = (
    "You are the maintenance assistant of a water treatment plant. You know its pumps, valves, filters and "
    "sensors, their normal ranges and their failure modes. Answer briefly and plainly."
)


@dataclass
class Result:
    node: str
    ttft: float
    total: float
    tokens: int
    cached: int
    ok: bool
    error: str = ""
    started: float = 0.0
    ended: float = 0.0


class Site:
    """Mosquitto, two nodes and an orchestrator in a temporary directory, stopped on exit."""

    def __init__(self, tmp: Path, security: BenchSecurity) -> None:
        self.tmp, self.procs, self.security = tmp, {}, security  # type: ignore[var-annotated]
        self.insecure = insecure = security.insecure
        self.broker = Mosquitto(tmp, insecure=insecure)  # TLS, client certificates required, unless insecure
        self.env = {"EDGEFLEET_MQTT_URL": self.broker.url, "EDGEFLEET_SITE": security.site, **security.env()}
        self.nodes: dict[str, str] = {}
        for node_id in ("bench-a", "bench-b"):
            port = free_port()
            self.nodes[node_id] = f"127.0.0.1:{port}"
            env = {**self.env, "EDGEFLEET_THREADS": "1", "EDGEFLEET_TELEMETRY_INTERVAL_S": "1",
                   "EDGEFLEET_RESPONSE_CACHE": "false", "EDGEFLEET_GROUPS": "bench",
                   **security.node_env(node_id)}  # fmt: skip
            cmd = [str(BIN / "edgefleet-node"), "serve", "--host", "127.0.0.1", "--port", str(port), "--node-id",
                   node_id, "--data-dir", str(tmp / node_id)]  # fmt: skip
            self._spawn(node_id, cmd, env)
        self.grpc_port, self.http_port = free_port(), free_port()
        # Metadata of every front-door call: none (the harness certificate authenticates), unless the
        # gRPC front door refuses the certificate (`check_front_door_auth`); then an API key.
        self.front_metadata: tuple[tuple[str, str], ...] = ()
        self._key = ""
        if not insecure:
            store = KeyStore(tmp / "api-keys.db")  # the orchestrator's default: beside the registry
            self._key = store.create("bench")[1]
            store.close()
        self.start_orchestrator(affinity=True)
        for node_id, address in self.nodes.items():
            with self.channel(address, node_id) as channel:
                grpc.channel_ready_future(channel).result(timeout=120)
        self.wait_routable(set(self.nodes))
        self.check_front_door_auth()

    def check_front_door_auth(self) -> None:
        """The secure front door takes a site client certificate or an API key. If its gRPC listener
        refuses the harness certificate (UNAUTHENTICATED), say so and send the bench's API key instead
        (still TLS, and the key check is a sha256: the figures stay those of TLS)."""
        if self.insecure:
            return
        req = pb.GenerateRequest(prompt="hi", max_tokens=1, temperature=0)
        with self.channel(self.front_door) as channel:
            r = one(pb_grpc.InferenceStub(channel), req)
        if not r.ok and "API key" in r.error:
            print(
                f"NOTE: the gRPC front door refused the harness client certificate ({r.error!r}); "
                "front-door calls send an API key (Authorization: Bearer) over TLS instead",
                flush=True,
            )
            self.front_metadata = (("authorization", f"Bearer {self._key}"),)

    def channel(self, address: str, node_id: str | None = None) -> grpc.Channel:
        """To a node (`node_id`: the name its certificate must carry) or the front door: mutual TLS as
        the harness operator, or plaintext when insecure."""
        return self.security.channel(address, node_id)

    @property
    def front_door(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def https(self, path: str) -> bytes:
        """GET on the front door's HTTP listener (HTTPS with the harness certificate unless insecure)."""
        url, context = f"{self.security.http_scheme}://127.0.0.1:{self.http_port}{path}", self.security.ssl_context()
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return bytes(r.read())

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        full = {**os.environ, "EDGEFLEET_LOG_LEVEL": "WARNING", "EDGEFLEET_LOG_FORMAT": "text", **env}
        self.procs[name] = subprocess.Popen(cmd, env=full, stdout=log, stderr=log, start_new_session=True)

    def start_orchestrator(self, affinity: bool) -> None:
        stop_process(self.procs.get("orchestrator"))
        env = {
            **self.env,
            **self.security.orchestrator_env(),
            "EDGEFLEET_FRONT_DOOR_ADDRESS": f"127.0.0.1:{self.grpc_port}",
            "EDGEFLEET_OPENAI_ADDRESS": f"127.0.0.1:{self.http_port}",
            "EDGEFLEET_ROUTE_AFFINITY": str(affinity).lower(),
            "EDGEFLEET_ARTIFACT_DIR": str(self.tmp / "artifacts"),
            "EDGEFLEET_LOG_LEVEL": "INFO",
        }
        cmd = [str(BIN / "edgefleet-orchestrator"), "serve", "--registry-db", str(self.tmp / "registry.db")]
        self._spawn("orchestrator", cmd, env)
        with self.channel(self.front_door) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)

    def routable(self) -> set[str]:
        try:
            return {n for m in json.loads(self.https("/v1/models"))["data"] for n in m["nodes"]}
        except OSError:
            return set()

    def counter(self, name: str, **labels: str) -> float:
        """A sample's value from the front door's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.https("/metrics").decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def wait_routable(self, nodes: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not nodes <= self.routable():
            if time.monotonic() > deadline:
                raise TimeoutError(f"front door does not route to {nodes}")
            time.sleep(0.1)

    def push_templates(self, count: int) -> None:
        """Templates fault0… whose system prompts differ from their first word: no shared prefix."""
        f = self.tmp / "fault.j2"
        f.write_text(TEMPLATE)
        for i in range(count):
            cmd = [str(BIN / "edgefleet"), "fleet", "push-template", str(f), "--name", f"fault-{i}", "--version", "1",
                   "--target", "bench", "--system", f"Section {i}. {SYSTEM}"]  # fmt: skip
            subprocess.run(cmd, env={**os.environ, **self.env}, check=True, capture_output=True, timeout=60)

    def close(self) -> None:
        for name in ["orchestrator", *self.nodes]:
            stop_process(self.procs.get(name))
        self.broker.stop()


def one(stub: pb_grpc.InferenceStub, req: pb.GenerateRequest, metadata: tuple = ()) -> Result:
    started = time.monotonic()
    ttft = 0.0
    try:
        call = stub.Generate(req, timeout=120, metadata=metadata)
        last = None
        for chunk in call:
            if not ttft:
                ttft = time.monotonic() - started
            last = chunk
        node = dict(call.initial_metadata()).get("x-edgefleet-node", "")
        u = last.usage if last is not None else pb.Usage()
        end = time.monotonic()
        return Result(node, ttft, end - started, u.completion_tokens, u.cached_prompt_tokens, True, "", started, end)
    except grpc.RpcError as e:
        end = time.monotonic()
        return Result("", ttft, end - started, 0, 0, False, e.details() or e.code().name, started, end)


def closed_loop(concurrency: int, work: Callable[[int], Result], count: int = 0, seconds: float = 0.0) -> list[Result]:
    """`concurrency` workers calling `work`: `count` calls in all, or until `seconds` pass."""
    results: list[Result] = []
    lock, n = threading.Lock(), iter(range(10**9))
    stop_at = time.monotonic() + seconds if seconds else None

    def worker() -> None:
        while True:
            with lock:
                i = next(n)
            if (count and i >= count) or (stop_at and time.monotonic() >= stop_at):
                return
            r = work(i)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def ms(v: float) -> str:
    return f"{v * 1000:7.1f}"


@contextlib.contextmanager
def stubs(site: Site) -> Iterator[tuple[pb_grpc.InferenceStub, list[pb_grpc.InferenceStub]]]:
    channels = [site.channel(site.front_door)] + [site.channel(a, n) for n, a in site.nodes.items()]
    try:
        yield pb_grpc.InferenceStub(channels[0]), [pb_grpc.InferenceStub(c) for c in channels[1:]]
    finally:
        for c in channels:
            c.close()


def overhead(site: Site, requests: int, max_tokens: int) -> None:
    print(f"\n1. overhead ({requests} requests each, max_tokens {max_tokens}; ms)")
    print("   path          c   TTFT p50   TTFT p95   TTFT p99  total p50  total p95  total p99  tokens")
    req = pb.GenerateRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0)
    with stubs(site) as (front, direct):
        for stub in direct:  # connect (TLS handshakes) before measuring
            one(stub, req)
        one(front, req, site.front_metadata)
        for c in (1, 4):
            medians: dict[str, tuple[float, float]] = {}
            for name, work in (
                ("direct", lambda i: one(direct[i % 2], req)),
                ("front door", lambda i: one(front, req, site.front_metadata)),
            ):
                every = closed_loop(c, work, count=requests)
                rs = [r for r in every if r.ok]
                t, tot = [r.ttft for r in rs], [r.total for r in rs]
                cols = [ms(pct(v, q)) for v in (t, tot) for q in (0.5, 0.95, 0.99)]
                cols.append(f"{statistics.mean(r.tokens for r in rs) if rs else 0:5.1f}")
                failed = [r.error for r in every if not r.ok]
                note = f"  {len(failed)} failed: {failed[0]}" if failed else ""
                print(f"   {name:12} {c:2} " + "    ".join(cols) + note)
                medians[name] = (pct(t, 0.5), pct(tot, 0.5))
            (dt, dtot), (ft, ftot) = medians["direct"], medians["front door"]
            print(f"   added by the front door at c={c}: TTFT p50 {ms(ft - dt)} ms, total p50 {ms(ftot - dtot)} ms")


def throughput(site: Site, seconds: float, max_tokens: int) -> None:
    print(f"\n2. throughput at concurrency 8 ({seconds:.0f} s each, max_tokens {max_tokens})")
    req = pb.GenerateRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0)
    rates = {}
    with stubs(site) as (front, direct):
        for name, work in (
            ("direct", lambda i: one(direct[i % 2], req)),
            ("front door", lambda i: one(front, req, site.front_metadata)),
        ):
            started = time.monotonic()
            rs = closed_loop(8, work, seconds=seconds)
            took = time.monotonic() - started
            rates[name] = sum(r.tokens for r in rs) / took
            print(f"   {name:12} {rates[name]:7.1f} tok/s  {len(rs)} requests, {sum(not r.ok for r in rs)} failed")
    print(f"   ratio front door / direct: {rates['front door'] / rates['direct']:.3f}")


def affinity(site: Site, requests: int, templates: int) -> None:
    print(f"\n3. affinity on vs off (template traffic: {templates} templates, {requests} requests, c=2)")
    site.push_templates(templates)
    time.sleep(3)
    homes = Counter(max(site.nodes, key=lambda n: rendezvous_weight(f"t:fault-{i}", n)) for i in range(templates))
    print(f"   affinity homes (rendezvous): {dict(sorted(homes.items()))}; slots per node: 4")
    for on in (True, False):
        site.start_orchestrator(affinity=on)
        site.wait_routable(set(site.nodes))
        with stubs(site) as (front, _):

            def work(i: int) -> Result:
                v = {"sensor": f"pump-{i % 7}", "reading": f"{i % 5 + 3}.1 mm/s"}
                name = f"fault-{(i * 5) % templates}"
                req = pb.GenerateRequest(template=name, variables=v, max_tokens=4, temperature=0)
                return one(front, req, site.front_metadata)

            rs = [r for r in closed_loop(2, work, count=requests) if r.ok]
        hits = sum(r.cached > 0 for r in rs)
        cached = statistics.mean(r.cached for r in rs) if rs else 0.0
        print(f"   affinity {'on ' if on else 'off'}: cache hits {hits}/{len(rs)}, mean cached prompt tokens "
              f"{cached:5.1f}, TTFT p50 {ms(pct([r.ttft for r in rs], .5))} ms, nodes "
              f"{sorted({r.node for r in rs})}")  # fmt: skip
    site.start_orchestrator(affinity=True)
    site.wait_routable(set(site.nodes))


def failover(site: Site, seconds: float, kill_at: float, max_tokens: int) -> None:
    print(f"\n4. failover: closed loop c=4 for {seconds:.0f} s, bench-b SIGKILLed at {kill_at:.0f} s")
    req = pb.GenerateRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0)
    marks: dict[str, float] = {}

    def killer() -> None:
        time.sleep(kill_at)
        site.procs["bench-b"].kill()
        marks["kill"] = time.monotonic()
        while "bench-b" in site.routable():
            time.sleep(0.02)
        marks["out"] = time.monotonic()

    k = threading.Thread(target=killer)
    with stubs(site) as (front, _):
        k.start()
        rs = closed_loop(4, lambda i: one(front, req, site.front_metadata), seconds=seconds)
        k.join()
    kill, out = marks["kill"], marks.get("out", float("nan"))
    after = [r for r in rs if r.started >= out]
    in_flight = [r for r in rs if r.started < kill < r.ended]
    named = sum(not r.ok and "bench-b" in r.error for r in in_flight)
    moved = site.counter("edgefleet_front_door_failovers_total", node="bench-b")
    print(f"   requests {len(rs)}, failed {sum(not r.ok for r in rs)}")
    print(f"   started after bench-b left the rotation: {len(after)}, failed {sum(not r.ok for r in after)}")
    print(
        f"   in flight at the kill: {len(in_flight)}: error naming bench-b (after the first token) {named}, "
        f"failed otherwise {sum(not r.ok and 'bench-b' not in r.error for r in in_flight)}; failed over from "
        f"bench-b before the first token and completed on bench-a (failovers_total): {moved:.0f}"
    )
    print(f"   kill → out of rotation: {ms(out - kill)} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=40, help="requests per overhead and affinity measurement")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--throughput-s", type=float, default=30.0)
    p.add_argument(
        "--templates",
        type=int,
        default=2,
        help="distinct prompt prefixes in the affinity run",
    )
    p.add_argument("--only", action="append", choices=["overhead", "throughput", "affinity", "failover"])
    p.add_argument("--failover-s", type=float, default=60.0)
    p.add_argument("--kill-at-s", type=float, default=20.0)
    add_insecure_flag(p)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-fd-") as d:
        load = os.getloadavg()
        security = BenchSecurity(args.insecure)
        site = Site(Path(d), security)
        try:
            print(f"front door bench: two nodes (x86-dev, 1 thread each), {os.cpu_count()} CPUs, {security.mode}")
            print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
            only = set(args.only or ["overhead", "throughput", "affinity", "failover"])
            if "overhead" in only:
                overhead(site, args.requests, args.max_tokens)
            if "throughput" in only:
                throughput(site, args.throughput_s, args.max_tokens)
            if "affinity" in only:
                affinity(site, args.requests, args.templates)
            if "failover" in only:
                failover(site, args.failover_s, args.kill_at_s, args.max_tokens)
        finally:
            site.close()
            security.close()  # the run's site PKI
            load = os.getloadavg()
            print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
