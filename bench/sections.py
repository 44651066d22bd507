"""run_bench.py's optional sections: the separate benches whose figures join the summary.

Each runs after the throughput backends have stopped (alone on the machine), through the
bench module's own function, and answers a dict of figures (or {"error": ...}: a failed
section is reported, the rest of the run goes on):

  adapters  bench/adapter_mix.py: two adapters / one adapter, 4 streams (a node over gRPC)
  prefix    bench/prefix_restart.py: first answer after a restart / warm, TTFT (nodes over gRPC)
  kv        bench/kv_type.py: f16 against q8_0 KV, one model, in-process nodes (memory, agreement)
  speculation  bench/speculation.py: draftless speculation on / off, grounded answers, in-process engine
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.site_security import BenchSecurity

SECTIONS = ("adapters", "prefix", "kv", "speculation")


def add_section_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sections (each skipped unless named in --sections)")
    g.add_argument(
        "--sections",
        default="",
        help=f"optional sections, comma separated: {','.join(SECTIONS)} or all (default none)",
    )
    g.add_argument("--adapter-rounds", type=int, default=3, help="adapters: requests per stream (default 3)")
    g.add_argument("--adapter-repeats", type=int, default=2, help="adapters: runs per mix, best kept (default 2)")
    g.add_argument("--prefix-restarts", type=int, default=3, help="prefix: node restarts (default 3)")
    g.add_argument("--prefix-warm", type=int, default=3, help="prefix: warm requests per start (default 3)")
    g.add_argument("--kv-model", default="smollm2-135m-instruct", help="kv: catalog model (default smollm2)")
    g.add_argument("--kv-prompts", type=int, default=20, help="kv: greedy prompts (default 20)")
    g.add_argument("--spec-repeats", type=int, default=2, help="speculation: runs per setting, best kept (default 2)")
    g.add_argument("--kv-tool-tasks", type=int, default=0, help="kv: first N tool tasks; 0: all (default 0)")


def parse_sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if "all" in names:
        return list(SECTIONS)
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {', '.join(sorted(unknown))}; choose from {','.join(SECTIONS)},all")
    return [s for s in SECTIONS if s in names]


def run_sections(names: list[str], args: argparse.Namespace, security: BenchSecurity) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        print(f"\n--- section {name}", flush=True)
        t0 = time.perf_counter()
        try:
            out[name] = _RUNNERS[name](args, security)
        except Exception as e:  # a section's failure is a figure of the run, not its end
            print(f"  ERROR: section {name}: {e}", flush=True)
            out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
        out[name]["duration_s"] = round(time.perf_counter() - t0, 1)
    return out


def _adapters(args: argparse.Namespace, security: BenchSecurity) -> dict[str, Any]:
    from bench import adapter_mix

    res = adapter_mix.measure(args.adapter_rounds, args.max_tokens, args.adapter_repeats, security)
    return {"tokens_per_s": {k: res[k] for k in adapter_mix.MIXES}, **{k: res[k] for k in res if "_over_" in k}}


def _prefix(args: argparse.Namespace, security: BenchSecurity) -> dict[str, Any]:
    from bench import prefix_restart

    ns = argparse.Namespace(restarts=args.prefix_restarts, warm=args.prefix_warm, max_tokens=8, threads=0, store_mb=256)
    return {**prefix_restart.measure(ns, security), "restarts": ns.restarts, "warm": ns.warm}


def _kv(args: argparse.Namespace, security: BenchSecurity) -> dict[str, Any]:
    from bench import kv_type
    from bench.tool_scoring import load_tasks

    ts = load_tasks()
    llama_log = logging.getLogger("edgefleet.llama")
    propagate = llama_log.propagate
    llama_log.propagate = False  # its debug lines only feed kv_type's KV-size reader
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ns = argparse.Namespace(
                prompts=args.kv_prompts,
                max_tokens=args.max_tokens,
                tool_tasks=args.kv_tool_tasks,
                tool_max_tokens=160,
                threads=1,
                profile="x86-dev",
                data_dir=Path(tmp),
            )
            runs = {kv: kv_type.run_one(args.kv_model, kv, ns, ts) for kv in kv_type.KV_TYPES}
            cmp = kv_type.compare(runs["f16"], runs["q8_0"], ts)
            mem = kv_type.memory_rows(args.kv_model, ns.data_dir)
    finally:
        llama_log.propagate = propagate
    print(kv_type.table(args.kv_model, runs, cmp, mem), flush=True)
    f16, q8 = runs["f16"], runs["q8_0"]
    pi4 = next((r for r in mem if "max_slots_f16" in r), None)
    return {
        "model": args.kv_model,
        "served": {"f16": f16.kv_type_served, "q8_0": q8.kv_type_served},
        "flash_attn": {"f16": f16.flash_attn, "q8_0": q8.flash_attn},
        "llama_kv_mib": {"f16": f16.llama_kv_mib, "q8_0": q8.llama_kv_mib},
        "saved_mib": f16.llama_kv_mib - q8.llama_kv_mib,
        "pi4": pi4,
        "memory": mem,
        "compare": cmp,
    }


def _speculation(args: argparse.Namespace, security: BenchSecurity) -> dict[str, Any]:
    from bench import speculation
    from edgefleet.node.engine.speculation import SpeculationPolicy

    return speculation.measure([1, 8], 96, args.spec_repeats, SpeculationPolicy(), "smollm2-135m-instruct")


_RUNNERS = {"adapters": _adapters, "prefix": _prefix, "kv": _kv, "speculation": _speculation}
