#!/usr/bin/env python3
"""edgefleet throughput benchmark: the node against three llama.cpp baselines and the raw ceiling.

One run, one model (the node's default, SmolLM2-135M-Instruct Q4_1), one llama.cpp build
(the llama.cpp that llama-cpp-python 0.3.36 vendors, built with the same CPU flags), five
backends:

  node             edgefleet-node over gRPC (continuous batching, 8 slots x 2048 ctx)
  inprocess        llama_cpp.Llama.create_completion in a worker process (one context)
  llama_cpp.server llama-cpp-python's OpenAI-style server over HTTP (/v1/completions)
  llama-server     llama.cpp's own C++ server over HTTP (/completion), -np 8 --kv-unified
  raw              the raw batched-decode ceiling (bench/raw_batched.py): llama_decode over one batch
                   of the level's N sequences, greedy argmax, nothing else, in a worker process

The node is started first, alone, for its cold start; then the others. All stay up, and
only one generates at a time: each concurrency level is measured --repeats times, the
backends taking turns in an order that rotates, so that a slow drift of the machine's
speed does not favour one of them; a level's figure is the median of its repeats.

At a concurrency level N, N clients each send their requests back to back (a closed
loop; --rounds each, more at low N so a level has at least --min-requests). Every
backend gets the same prompts (chat-rendered sensor questions, each measurement a set no
backend has seen, so no prefix cache holds a whole prompt), the same max_tokens,
temperature 0 (greedy) and the same top_p/top_k/seed/repeat-penalty.

  tokens/s  = completion tokens of every request of the level / wall time of the level
              (first request sent -> last token received)
  TTFT      = mean over requests of (request sent -> first text received), client side

The in-process backend has one llama.cpp context that serves one request at a time, and
llama.cpp contexts must stay on one thread, so its requests run back to back on the
worker's main thread in the order a FIFO server would take them from N closed-loop
clients. Its TTFT for level N counts the time a request would wait behind the others:
client c's round r request is "sent" when its round r-1 request finished (or at the level
start), so TTFT = first token time - that send time. Its concurrency-1 figure is a plain,
real measurement; that is the one the done-when target uses.

Other processes on the machine spoil the figures (llama.cpp's threads wait for each other
at every step), so the script waits for idle CPUs before each measurement, accounts the
CPU time others used during it, and re-measures (fresh prompts) when it was over 10 %.

The node runs secure by default, as the product does: its own node certificate from a site PKI
made for the run (mutual TLS on gRPC; the bench's clients show the `harness` operator certificate
and check the node's name), the same as bench/front_door.py. `--insecure`: plaintext gRPC with
EDGEFLEET_INSECURE=1, to compare. The other backends have no TLS either way.

Also measured: the node's cold start (Popen -> grpc.health.v1 SERVING, polled every 20 ms)
and its peak RSS (psutil polling of the node process during the whole run, and the
kernel's VmHWM), compared with model file + KV cache (n_layer * 2 * head_dim * n_head_kv *
2 bytes per token, times n_ctx per slot, times slots) + 150 MiB.

Optional sections (--sections adapters,prefix,kv or all; bench/sections.py) run the separate
benches after the backends have stopped: mixed adapters (bench/adapter_mix.py), the first answer
after a restart (bench/prefix_restart.py) and the KV type (bench/kv_type.py).

Results: tables, ratio and PASS/FAIL lines on stdout, then the summary of issue 26's figures (every
ratio against its target, met or missed by how much; bench/summary.py); bench/results/bench-<UTC time>.json,
bench/results/latest.json and bench/results/throughput.png.

Run:  bench/setup_llama_server.sh && .venv/bin/python bench/run_bench.py [--insecure]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

# Run as a script (bench/ first on sys.path): import the bench modules as the package bench.*.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.backend import BenchContext
from bench.cpu_load import WAIT_BUDGET
from bench.inprocess import worker_inprocess
from bench.measure import run_all
from bench.plot import plot
from bench.prompts import Prompt, model_path, plan_level, render_prompts, sensor_prompt, vocab_model
from bench.raw_batched import worker_raw
from bench.report import fmt_mib, report
from bench.sections import add_section_flags, parse_sections, run_sections
from bench.settings import (
    BACKENDS,
    BENCH_DIR,
    LABELS,
    LLAMA_SERVER_BIN,
    LOG_DIR,
    N_BATCH,
    N_CTX_SLOT,
    QUEUE_LENGTH,
    REPEAT_PENALTY,
    SEED,
    SLOTS,
    TEMPERATURE,
    THREADS,
    TOP_K,
    TOP_P,
)
from bench.site_security import BenchSecurity, add_insecure_flag
from bench.summary import summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--concurrency", default="1,2,4,8", help="concurrency levels, comma separated (default 1,2,4,8)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="requests per client per level (default 2)")
    p.add_argument(
        "--min-requests",
        type=int,
        default=8,
        help="at least this many requests per level: low levels get more rounds (default 8)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measure every level this many times, the backends taking turns; the figures are the medians (default 3)",
    )
    p.add_argument(
        "--load-retries",
        type=int,
        default=2,
        help="re-measure a level up to this many times when other processes used over 10%% of the "
        "CPUs meanwhile (default 2)",
    )
    p.add_argument(
        "--only",
        default=",".join(BACKENDS),
        help=f"backends to run (default all: {','.join(BACKENDS)}; 'none': only the --sections)",
    )
    p.add_argument("--out", default=str(BENCH_DIR / "results"), help="results folder (default bench/results)")
    p.add_argument(
        "--flash-attn",
        choices=["on", "off"],
        default="on",
        help="flash attention for in-process and llama_cpp.server ('on' matches what llama.cpp's "
        "'auto' picks on CPU for the node and llama-server; 'off' also turns it off in llama-server)",
    )
    p.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos to llama-server")
    p.add_argument("--check", action="store_true", help="exit 1 when a target FAILs")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before starting each backend, wait up to this many seconds for other processes to "
        "leave the CPUs idle (a quarter of it before each measurement); default 120",
    )
    p.add_argument(
        "--wait-budget",
        type=float,
        default=150.0,
        help="seconds the whole run may spend waiting for a quiet machine (default 150)",
    )
    add_insecure_flag(p)
    add_section_flags(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def environment() -> dict[str, Any]:
    from importlib import metadata

    def ver(d: str) -> str:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            return "unknown"

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "llama_cpp_python": ver("llama-cpp-python"),
        "grpcio": ver("grpcio"),
        "edgefleet": ver("edgefleet"),
        "httpx": ver("httpx"),
        "llama_server_binary": str(LLAMA_SERVER_BIN) if LLAMA_SERVER_BIN.exists() else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "inprocess":
        return worker_inprocess()
    if args.worker == "raw":
        return worker_raw()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the servers this run started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    if not levels or min(levels) < 1 or max(levels) > SLOTS + QUEUE_LENGTH:
        raise SystemExit(f"--concurrency must be between 1 and {SLOTS + QUEUE_LENGTH}")
    only = [b.strip() for b in args.only.split(",") if b.strip() and b.strip() != "none"]
    section_names = parse_sections(args.sections)
    unknown = set(only) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    if min(args.max_tokens, args.rounds, args.min_requests, args.repeats) < 1 or args.load_retries < 0:
        raise SystemExit(
            "--max-tokens, --rounds, --min-requests and --repeats must be at least 1, --load-retries at least 0"
        )
    WAIT_BUDGET["left_s"] = max(0.0, args.wait_budget)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    model = model_path()
    rounds = {n: max(args.rounds, -(-args.min_requests // n)) for n in levels}
    n_sets = args.repeats * (1 + args.load_retries)
    n_prompts = 1 + n_sets * sum(n * rounds[n] for n in levels)
    prompts, facts = render_prompts(model, [sensor_prompt(i) for i in range(n_prompts)])
    # Every measurement (level, repeat, re-measurement) gets prompts no backend has seen.
    plans: dict[int, list[list[list[list[Prompt]]]]] = {n: [] for n in levels}
    offset = 1
    for n in levels:
        for _ in range(args.repeats):
            sets = []
            for _ in range(1 + args.load_retries):
                sets.append(plan_level(prompts, n, rounds[n], offset))
                offset += n * rounds[n]
            plans[n].append(sets)

    vocab = vocab_model(model)
    vocab_lock = threading.Lock()

    def count_tokens(text: str) -> int:
        with vocab_lock:
            return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    security = BenchSecurity(args.insecure)
    ctx = BenchContext(args, model, levels, plans, prompts[0], count_tokens, security)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    print(
        f"model {model.name} ({fmt_mib(facts.size_bytes)}), llama-cpp-python {environment()['llama_cpp_python']}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"levels {levels}, requests per client {rounds} (--rounds {args.rounds}, --min-requests "
        f"{args.min_requests}), {args.repeats} repeats, max_tokens {args.max_tokens}, temperature {TEMPERATURE}, "
        f"{n_prompts} distinct prompts ({min(p.n_tokens for p in prompts)}-{max(p.n_tokens for p in prompts)} "
        f"tokens)"
    )
    print(f"node: {security.mode}")

    results: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    names = []
    for b in BACKENDS:
        if b not in only:
            continue
        if b == "llama-server" and not LLAMA_SERVER_BIN.exists():
            msg = f"{LLAMA_SERVER_BIN} is missing: run bench/setup_llama_server.sh to build it (about 5 minutes)"
            print(f"\n--- {LABELS[b]}: SKIPPED: {msg}", flush=True)
            results[b] = {"skipped": msg}
            continue
        names.append(b)
    t_run = time.perf_counter()
    try:
        run_all(ctx, names, results)  # every backend is stopped when it returns
        sections = run_sections(section_names, args, security)
    finally:
        vocab.close()
        security.close()  # the run's site PKI

    checks = report(results, levels, facts, args.max_tokens)
    summary_checks = summary(results, sections)
    doc = {
        "timestamp": stamp,
        "duration_s": round(time.perf_counter() - t_run, 1),
        "waited_for_quiet_s": round(WAIT_BUDGET["waited_s"], 1),
        "config": {
            "levels": levels,
            "rounds": args.rounds,
            "min_requests": args.min_requests,
            "rounds_per_level": {str(n): r for n, r in rounds.items()},
            "repeats": args.repeats,
            "load_retries": args.load_retries,
            "max_tokens": args.max_tokens,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "top_k": TOP_K,
            "seed": SEED,
            "repeat_penalty": REPEAT_PENALTY,
            "flash_attn": args.flash_attn,
            "llama_server_ignore_eos": not args.no_ignore_eos,
            "slots": SLOTS,
            "n_ctx_per_slot": N_CTX_SLOT,
            "n_batch": N_BATCH,
            "threads": THREADS,
            "queue_length": QUEUE_LENGTH,
            "backends": only,
            "sections": section_names,
            "node_security": security.mode,
        },
        "model": asdict(facts),
        "environment": environment(),
        "prompts": [asdict(p) for p in prompts],
        "results": results,
        "sections": sections,
        "checks": checks,
        "summary": summary_checks,
    }
    stamped = out_dir / f"bench-{stamp}.json"
    stamped.write_text(json.dumps(doc, indent=1))
    shutil.copyfile(stamped, out_dir / "latest.json")
    png = out_dir / "throughput.png"
    try:
        plot(
            results,
            levels,
            png,
            f"{model.name}, {os.cpu_count()} CPUs, max_tokens {args.max_tokens}, "
            f">= {args.min_requests} requests x {args.repeats} repeats per level, {stamp}",
        )
    except Exception as e:  # the figures are already written
        print(f"plot failed: {e}")
    print(
        f"\nwrote {stamped}, {out_dir / 'latest.json'} and {png}  (run took {doc['duration_s']:.0f} s, "
        f"{doc['waited_for_quiet_s']:.0f} s of it waiting for other processes)"
    )
    if args.check and any(c["result"] == "FAIL" for c in checks + summary_checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
