"""The run: start the backends, then measure every level, the backends taking turns."""

from __future__ import annotations

import time
from typing import Any

from bench.backend import Backend, BenchContext
from bench.cpu_load import FOREIGN_SHARE_WARN, wait_quiet
from bench.inprocess import InProcessBackend
from bench.raw_batched import RawBatchedBackend
from bench.records import LevelResult, combine, summarize
from bench.servers import LlamaCppServerBackend, LlamaServerBackend, NodeBackend
from bench.settings import LABELS

BACKEND_CLASSES: dict[str, type[Backend]] = {
    "node": NodeBackend,
    "inprocess": InProcessBackend,
    "llama_cpp.server": LlamaCppServerBackend,
    "llama-server": LlamaServerBackend,
    "raw": RawBatchedBackend,
}


def measure_level(ctx: BenchContext, b: Backend, n: int, rep: int) -> LevelResult:
    """One measurement of backend b at concurrency n; re-measured (fresh prompts) under load."""
    best: LevelResult | None = None
    for attempt in range(1 + ctx.args.load_retries):
        time.sleep(0.2)
        wait_quiet(ctx.args.quiet_wait / 4, what=f" before {b.name} c={n}")
        # A re-measurement gets a fresh prompt set: a prompt the server has seen would be
        # served from its prefix cache.
        recs, cpu = b.measure(ctx.plans[n][rep][attempt])
        res = summarize(n, recs)
        res.cpu = {**cpu, "attempt": attempt, "repeat": rep}
        busy = f", {cpu['foreign_share']:.0%} CPU used by OTHER processes" if cpu["foreign_share"] >= 0.02 else ""
        print(
            f"  c={n} #{rep + 1} {LABELS[b.name]:20} {res.tokens_per_s:7.1f} tok/s, TTFT {res.ttft_ms_mean:7.1f} ms"
            f"  ({res.requests} requests, {res.wall_s:.2f} s{busy})",
            flush=True,
        )
        if best is None or cpu["foreign_share"] < best.cpu["foreign_share"]:
            best = res
        if cpu["foreign_share"] < FOREIGN_SHARE_WARN:
            break
        if attempt < ctx.args.load_retries:
            print(f"  re-measuring {b.name} c={n}: other processes used the CPUs", flush=True)
    assert best is not None
    return best


def run_all(ctx: BenchContext, names: list[str], results: dict[str, Any]) -> None:
    """Start every backend (the node first, on a quiet machine), then measure level by level.

    Within a level the backends take turns (the order rotates between repeats and levels),
    so that slow drifts of the machine's speed do not favour one of them.
    """
    running: list[Backend] = []
    try:
        for name in names:
            print(f"\n--- starting {LABELS[name]}", flush=True)
            wait_quiet(ctx.args.quiet_wait)
            b = BACKEND_CLASSES[name](ctx)
            try:
                b.start()
                b.warm()
            except Exception as e:
                print(f"  ERROR: {e}", flush=True)
                results[name] = {"error": str(e), **b.info}
                b.stop()
                continue
            running.append(b)
        reps_of: dict[str, dict[int, list[LevelResult]]] = {b.name: {} for b in running}
        for li, n in enumerate(ctx.levels):
            print(f"\n--- concurrency {n}", flush=True)
            for rep in range(ctx.args.repeats):
                k = (li + rep) % max(1, len(running))
                for b in running[k:] + running[:k]:
                    if b.name in results:  # failed earlier
                        continue
                    try:
                        reps_of[b.name].setdefault(n, []).append(measure_level(ctx, b, n, rep))
                    except Exception as e:
                        print(f"  ERROR: {b.name}: {e}", flush=True)
                        results[b.name] = {"error": str(e), **b.info}
        for b in running:
            b.finish()
            if b.name not in results:
                results[b.name] = {**b.info, "levels": {str(n): combine(r) for n, r in reps_of[b.name].items()}}
    finally:
        for b in reversed(running):
            b.stop()
