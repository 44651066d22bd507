"""What one routing decision costs as the fleet grows: the front door's router (`Router.claim` on
the fleet view's current snapshot, then `release`), in process, on a fleet view built from the
contract's own payload models (NodeStatus with NodeInfoPayload, and Telemetry, as the registry
keeps them and the orchestrator rebuilds its view at start). Also the writer's side: one telemetry
message applied to the view (a new snapshot published), as ingest does for every message.

The fleet: four models, ten groups, x86-dev nodes with 4 slots each. Requests:
  any              no needs, no affinity key (the front door's readiness probe, a bare gRPC call)
  model, template  a model and a repeated affinity key (a template's or system prompt's: the usual case)
  model, new key   a model and an affinity key never seen before (a system prompt per caller)
  any, new key     no model, a new key each call: every node eligible and weighed (the worst case)
  model+group      a model pinned to a group (x-edgefleet-group)
  after telemetry  `model, template` on a snapshot replaced by a telemetry message since the last decision
  all busy         every slot of the model's nodes claimed: refused ALL_BUSY
  no node          a model no node serves: refused NO_NODE naming it
  telemetry in     FleetView.apply_telemetry (the ingest side, not a decision)
  100 in a batch   100 telemetry messages applied in one `FleetView.batch()` (where the view has it)

Prints µs per call, p50 and p99 over `--calls` timed calls (after a warm-up), per fleet size.

    .venv/bin/python bench/router_bench.py [--nodes 10,100,1000,5000] [--calls 2000]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgefleet.orchestrator.fleet_view import FleetView  # noqa: E402
from edgefleet.orchestrator.front_door.router import Router, RouteRequest, RoutingPolicy  # noqa: E402
from edgefleet.orchestrator.registry import NodeRecord  # noqa: E402
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, Telemetry  # noqa: E402

MODELS = ("smol", "qwen", "phi", "gemma")
GROUPS = 10
SLOTS = 4
NOW = 1_000_000.0


def node_id(i: int) -> str:
    return f"node-{i:05d}"


def status(i: int) -> NodeStatus:
    model = MODELS[i % len(MODELS)]
    info = NodeInfoPayload(
        profile="x86-dev",
        groups=["x86-dev", f"line-{i % GROUPS}"],
        model=ModelRef(name=model, sha256=f"{MODELS.index(model) + 1}" * 64),
        grpc_address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:50051",
    )
    return NodeStatus(node_id=node_id(i), state="online", info=info, ts=NOW - 60)


def telemetry(i: int, queue: int = 0) -> Telemetry:
    return Telemetry(
        node_id=node_id(i),
        ts=NOW,
        queue_depth=queue,
        slots_busy=0,
        slots_total=SLOTS,
        slots_available=SLOTS,
        tokens_per_second=12.5,
        temperature_c=55.0,
        throttled=i % 17 == 0,
        shedding=False,
        rss_bytes=2 << 30,
    )


def fleet_of(n: int) -> FleetView:
    """The view as the orchestrator rebuilds it at start, then one status and telemetry as ingest applies them."""
    view = FleetView()
    records = [
        NodeRecord(node_id(i), "online", "", NOW - 60, NOW, status(i).info, None, telemetry(i, queue=i % 3))
        for i in range(n)
    ]
    view.rebuild(records, {})
    view.apply_status(status(0), seen=NOW)
    view.apply_telemetry(telemetry(0), seen=NOW)
    return view


def timed(
    fn: Callable[[int], object], calls: int, before: Callable[[int], object] | None = None
) -> tuple[float, float]:
    """(p50, p99) µs of `fn(i)` over `calls` calls, after a tenth as many untimed; `before(i)` untimed."""
    for i in range(max(1, calls // 10)):
        fn(i)
    took = []
    for i in range(calls):
        if before is not None:
            before(i)
        t = time.perf_counter_ns()
        fn(i)
        took.append((time.perf_counter_ns() - t) / 1000)
    q = statistics.quantiles(took, n=100)
    return statistics.median(took), q[98]


def decide(router: Router, view: FleetView, req: Callable[[int], RouteRequest]) -> Callable[[int], object]:
    """One decision as the slot queue makes it (snapshot, claim), then the release when the call ends."""

    def run(i: int) -> object:
        d = router.claim(view.snapshot(), req(i), NOW)
        if d.claim is not None:
            router.release(d.claim)
        return d

    return run


def measure(n: int, calls: int) -> list[tuple[str, float, float]]:
    view = fleet_of(n)
    router = Router(RoutingPolicy())
    rows: list[tuple[str, float, float]] = []
    fresh = itertools.count()

    def row(name: str, fn: Callable[[int], object], before: Callable[[int], object] | None = None) -> None:
        rows.append((name, *timed(fn, calls, before)))

    template = RouteRequest(model="smol", affinity_key="t:triage")
    row("any", decide(router, view, lambda i: RouteRequest()))
    row("model, template", decide(router, view, lambda i: template))
    row("model, new key", decide(router, view, lambda i: RouteRequest(model="smol", affinity_key=f"s:{next(fresh)}")))
    row("any, new key", decide(router, view, lambda i: RouteRequest(affinity_key=f"s:{next(fresh)}")))
    pinned = RouteRequest(model="qwen", group="line-1", affinity_key="t:triage")
    row("model+group", decide(router, view, lambda i: pinned))
    tick = lambda i: view.apply_telemetry(telemetry(i % n, queue=i % 5), seen=NOW)  # noqa: E731
    row("after telemetry", decide(router, view, lambda i: template), before=tick)
    busy = Router(RoutingPolicy())
    while busy.claim(view.snapshot(), RouteRequest(model="phi"), NOW).claim is not None:
        pass
    row("all busy", lambda i: busy.claim(view.snapshot(), RouteRequest(model="phi"), NOW))
    row("no node", lambda i: router.claim(view.snapshot(), RouteRequest(model="llama-405b"), NOW))
    row("telemetry in", tick)
    batch = getattr(view, "batch", None)  # ingest's batches, where the view has them: one snapshot per batch
    if batch is not None:

        def hundred(i: int) -> None:
            with batch():
                for j in range(100):
                    tick(i * 100 + j)

        rows.append(("100 in a batch", *timed(hundred, max(10, calls // 10))))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="10,100,1000,5000", help="fleet sizes, comma-separated")
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per figure")
    args = ap.parse_args()
    sizes = [int(s) for s in args.nodes.split(",") if s.strip()]
    print(f"{'nodes':>6}  {'request':<16} {'p50 µs':>9} {'p99 µs':>9}")
    for n in sizes:
        for name, p50, p99 in measure(n, args.calls):
            print(f"{n:>6}  {name:<16} {p50:>9.1f} {p99:>9.1f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
