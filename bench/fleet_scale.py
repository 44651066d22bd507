"""Scale benchmark of one site's control plane: N simulated nodes against a real Mosquitto, the real
orchestrator and the real CLI.

For each N of `--nodes` (default 100,1000,5000), on a fresh broker and registry:
1. announce: the simulator's N nodes connect at once (`--spread 0`) and announce themselves; time until
   the orchestrator's registry lists all N online with a birth of this round;
2. `fleet status --json` through the real CLI (`--status-runs` times): wall time and nodes listed online,
   or the CLI's error (printed, not raised);
3. telemetry load: every node sends telemetry every `--telemetry` s; over `--window` s, the CPU share
   (of one core, from /proc/<pid>/stat) and RSS of the orchestrator, and the CPU of the broker and of
   this process (the simulator);
4. push: `fleet push-template … --target <the group of all sim nodes> --no-wait`; time until every
   simulated node applied the new generation, and until the registry holds every node's reported state
   with it (the orchestrator's confirmation);
5. broker restart (SIGTERM, so the broker sends the wills, then start): time until the registry lists
   all N online with a birth sent after the restart;
6. orchestrator restart (SIGTERM, then start): time until the registry lists all N online, each heard
   from by the new process; then `fleet status --json` once more.
Each wait has `--phase-timeout` s; one that runs out prints how many it reached.

    .venv/bin/python bench/fleet_scale.py --nodes 100,1000 [--phase-timeout 60] [--window 20]

Plaintext (EDGEFLEET_INSECURE=1 and an anonymous broker): what is measured is ingest and paging, not
TLS. The broker is the bench's own configuration (`--broker-option 'max_queued_messages 10000'` adds a
line), with Mosquitto's default queue limits unless told otherwise, as the shipped configuration has.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_sim import FleetSim, SimConfig, raise_fd_limit  # noqa: E402
from bench.fleet_site import (  # noqa: E402
    SITE,
    Broker,
    Orchestrator,
    broker_sizing,
    cli,
    cli_status,
    confirmed,
    cpu_seconds,
    listed,
    rss_mib,
    wait,
)

GROUP = "sim"


def reached(seconds: float | None, count: int, n: int) -> dict[str, Any]:
    return {"s": seconds, "count": count, "of": n}


def run_case(n: int, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    """Every phase for `n` nodes; the figures go into `out` as they come (a failed phase keeps the others)."""
    timeout = args.phase_timeout
    sizing = broker_sizing(n, args.broker_sizing)
    out["broker_lines"] = [*sizing, *args.broker_option]
    print(f"  N={n}: broker {'; '.join(out['broker_lines']) or 'with Mosquitto default limits'}", flush=True)
    broker = Broker(tmp / "broker", out["broker_lines"])
    broker.start()
    orch = Orchestrator(tmp, broker)
    sim = FleetSim(
        SimConfig(
            port=broker.port,
            site=SITE,
            nodes=n,
            group=GROUP,
            telemetry_s=args.telemetry,
            spread_s=args.spread,
            reannounce_on_orchestrator=not args.no_reannounce,
        )
    )
    try:
        orch.start(timeout)
        assert orch.proc is not None and broker.proc is not None
        t0 = time.monotonic()
        sim.start()
        s = wait(lambda: listed(orch.db, epoch=1) >= n, timeout)
        out["announce"] = reached(s, listed(orch.db, epoch=1), n)
        out["sim_connected"] = sim.connected
        print(f"  N={n}: announce {fmt_reached(out['announce'])} (sim connected {sim.connected})", flush=True)
        out["announce_all_connected_s"] = time.monotonic() - t0 if sim.connected == n else None

        out["status"] = [cli_status(broker.port, args.status_timeout) for _ in range(args.status_runs)]
        print(f"  N={n}: fleet status {[fmt_status(r) for r in out['status']]}", flush=True)

        sent0, wall0, self0 = sim.counts["telemetry"], time.monotonic(), time.process_time()
        cpu0, bcpu0 = cpu_seconds(orch.proc.pid), cpu_seconds(broker.proc.pid)
        time.sleep(args.window)
        wall = time.monotonic() - wall0
        out["load"] = {
            "window_s": wall,
            "telemetry_per_s": (sim.counts["telemetry"] - sent0) / wall,
            "orch_cpu_pct": 100 * (cpu_seconds(orch.proc.pid) - cpu0) / wall,
            "orch_rss_mib": rss_mib(orch.proc.pid),
            "broker_cpu_pct": 100 * (cpu_seconds(broker.proc.pid) - bcpu0) / wall,
            "sim_cpu_pct": 100 * (time.process_time() - self0) / wall,
        }
        print(f"  N={n}: load {fmt_load(out['load'])}", flush=True)

        out["push"] = push(sim, orch, broker.port, n, tmp, timeout)
        print(f"  N={n}: push {out['push']}", flush=True)

        sim.set_epoch(2)
        broker.stop()
        broker.start()
        s = wait(lambda: listed(orch.db, epoch=2) >= n, timeout)
        out["broker_restart"] = reached(s, listed(orch.db, epoch=2), n)
        print(f"  N={n}: broker restart {fmt_reached(out['broker_restart'])}", flush=True)

        orch.stop()
        t_start = time.time()
        t0 = time.monotonic()
        orch.start(timeout)
        rest = max(0.0, timeout - (time.monotonic() - t0))
        s = wait(lambda: listed(orch.db, heard_since=t_start) >= n, rest)
        count = listed(orch.db, heard_since=t_start)
        out["orch_restart"] = reached(None if s is None else time.monotonic() - t0, count, n)
        out["status_after"] = cli_status(broker.port, args.status_timeout)
        print(f"  N={n}: orchestrator restart {fmt_reached(out['orch_restart'])}", flush=True)
        out["sim_counts"] = dict(sim.counts)
    finally:
        sim.stop(goodbye=False, timeout=15)
        orch.stop()
        broker.stop()


def push(sim: FleetSim, orch: Orchestrator, port: int, n: int, tmp: Path, timeout: float) -> dict[str, Any]:
    """Push a template to the group of every sim node; time until all applied it, and until the registry
    confirms it for all."""
    key = f"group:{GROUP}"
    before = sim.newest_generation(key)
    body = tmp / "bench-scale.j2"
    body.write_text("Summarize for the operator: {{ text }}\n")
    t0 = time.monotonic()
    version = f"1.0.{int(time.time())}"
    seconds, r = cli(port, "fleet", "push-template", str(body), "--name", "bench-scale", "--version", version,
                     "--target", GROUP, "--no-wait", timeout=timeout)  # fmt: skip
    result: dict[str, Any] = {"cli_s": seconds}
    if r is None or r.returncode != 0:
        result["error"] = "timed out" if r is None else (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        return result
    if wait(lambda: sim.newest_generation(key) > before, timeout) is None:
        result["error"] = "no node received the new generation"
        return result
    generation = sim.newest_generation(key)
    rest = max(0.0, timeout - (time.monotonic() - t0))
    wait(lambda: sim.applied(key, generation) >= n, rest)
    applied = sim.applied(key, generation)
    result["applied"] = reached(time.monotonic() - t0 if applied >= n else None, applied, n)
    rest = max(0.0, timeout - (time.monotonic() - t0))
    s = wait(lambda: confirmed(orch.db, key, generation) >= n, rest)
    result["confirmed"] = reached(None if s is None else time.monotonic() - t0, confirmed(orch.db, key, generation), n)
    return result


def fmt_reached(r: dict[str, Any] | None) -> str:
    if not r:
        return "n/a"
    if r["s"] is not None:
        return f"{r['s']:.1f} s"
    return f"NOT ALL: {r['count']}/{r['of']}"


def fmt_status(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED after {r['s']:.1f} s: {r['error']}"
    return f"{r['s']:.2f} s ({r['online']} online, {r['bytes'] / 1024:.0f} KiB)"


def fmt_load(load: dict[str, Any]) -> str:
    return (
        f"orchestrator {load['orch_cpu_pct']:.1f} % of a core, {load['orch_rss_mib']:.0f} MiB RSS; "
        f"broker {load['broker_cpu_pct']:.1f} %; simulator {load['sim_cpu_pct']:.1f} %; "
        f"{load['telemetry_per_s']:.0f} telemetry/s"
    )


def table(results: list[dict[str, Any]]) -> str:
    def push_part(r: dict[str, Any], part: str) -> str:
        p = r.get("push", {})
        return f"FAILED: {p['error']}" if "error" in p else fmt_reached(p.get(part))

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("broker limits", lambda r: "; ".join(r["broker_lines"]) or "Mosquitto defaults"),
        ("all listed online after the announce", lambda r: fmt_reached(r.get("announce"))),
        ("`fleet status --json` (first run)", lambda r: fmt_status(r["status"][0]) if r.get("status") else "n/a"),
        ("`fleet status --json` (last run)", lambda r: fmt_status(r["status"][-1]) if r.get("status") else "n/a"),
        ("orchestrator CPU under telemetry", lambda r: f"{r['load']['orch_cpu_pct']:.1f} % of a core"),
        ("orchestrator RSS under telemetry", lambda r: f"{r['load']['orch_rss_mib']:.0f} MiB"),
        ("broker / simulator CPU", lambda r: f"{r['load']['broker_cpu_pct']:.1f} % / {r['load']['sim_cpu_pct']:.1f} %"),
        ("push: applied by all sim nodes", lambda r: push_part(r, "applied")),
        ("push: confirmed by the registry for all", lambda r: push_part(r, "confirmed")),
        ("all listed online after a broker restart", lambda r: fmt_reached(r.get("broker_restart"))),
        ("all listed online after an orchestrator restart", lambda r: fmt_reached(r.get("orch_restart"))),
        ("`fleet status --json` after the restarts", lambda r: fmt_status(r["status_after"])),
        ("error", lambda r: r.get("error", "none")),
    ]
    head = "| figure | " + " | ".join(f"N={r['nodes']}" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for label, cell in rows:
        cells = []
        for r in results:
            try:
                cells.append(cell(r))
            except (KeyError, IndexError, TypeError):
                cells.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", default="100,1000,5000", help="comma-separated node counts (default 100,1000,5000)")
    p.add_argument("--telemetry", type=float, default=5.0, help="seconds between a node's telemetry (default 5)")
    p.add_argument("--spread", type=float, default=0.0, help="first connects spread over this many s (default 0)")
    p.add_argument("--phase-timeout", type=float, default=60.0, help="seconds each wait may take (default 60)")
    p.add_argument("--window", type=float, default=20.0, help="seconds of telemetry load measured (default 20)")
    p.add_argument("--status-runs", type=int, default=3, help="`fleet status` calls after the announce (default 3)")
    p.add_argument("--status-timeout", type=float, default=30.0, help="the CLI's --timeout for status (default 30)")
    p.add_argument(
        "--broker-sizing",
        choices=["shipped", "default"],
        default="shipped",
        help="queue and in-flight limits as `fleet broker-config` sizes them for N nodes, or Mosquitto's defaults",
    )
    p.add_argument("--broker-option", action="append", default=[], help="an extra mosquitto.conf line (repeat)")
    p.add_argument(
        "--no-reannounce",
        action="store_true",
        help="simulated nodes do not announce again when the orchestrator comes online (nodes before that change)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the run's directory (logs, registry) and say where")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.nodes.split(",") if x.strip()]
    limit = raise_fd_limit(max(counts) * 2 + 1024)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/fleet_scale.py", *sys.argv[1:]])
    print(f"command: {command}\nopen-file limit {limit}; {os.cpu_count()} CPUs", flush=True)
    results = []
    for n in counts:
        tmp = Path(tempfile.mkdtemp(prefix=f"fleet-scale-{n}-"))
        out: dict[str, Any] = {"nodes": n}
        results.append(out)
        try:
            run_case(n, args, tmp, out)
        except Exception as e:  # a failed phase: the figures so far, the error, and the logs are kept
            print(f"  N={n}: FAILED: {e}", flush=True)
            out["error"] = str(e)
        finally:
            if args.keep or "error" in out:
                print(f"  N={n}: logs and registry kept in {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ncommand: {command}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
