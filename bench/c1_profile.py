#!/usr/bin/env python3
"""Where a token's time goes at one client: the node's Generate path, step by step.

Runs the node's engine and its Inference servicer in this process (the bench's node profile,
plaintext gRPC on localhost, the node's own asyncio loop on the main thread) and one closed-loop
client in a child process (the bench's NodeClient, greedy sensor prompts). Two kinds of figures:

* wall time per generated token on the engine thread, split by timers put around the engine's
  parts from outside (nothing in the node is changed): llama_decode, sampling, token piece,
  text stream (UTF-8 and stop strings), event emission (the sink: channel put and loop wake-up),
  scheduler bookkeeping, and the rest of the step;
* CPU time per token of every thread of this process (psutil): the engine thread, the asyncio
  loop thread (channel wake-ups, GenerateChunk building, the gRPC write), llama.cpp's compute
  threads and gRPC's own threads; and of the client process.

    EDGEFLEET_THREADS=2 .venv/bin/python bench/c1_profile.py [--intervals base,0,30] [--inprocess]
        [--fixed-threads] [--requests 6] [--repeats 3] [--max-tokens 64] [--no-timers] [--cprofile-loop]

Configurations take turns round by round (the order rotates): `base` is the path as it was before
(the loop woken through a GIL-releasing write, llama.cpp's sampler chain for greedy too); a number is
today's path with that stream interval in ms; `--inprocess` adds bench/inprocess.py's worker on the
same prompts (node / in-process ratio in the same run); `--fixed-threads` turns the node's thread
governor off, so it keeps its threads as in-process and llama-server do.

Other processes on the machine change the wall figures; the CPU figures per token much less.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import grpc
from bench.clients import NodeClient
from bench.prompts import Prompt, sensor_prompt
port, max_tokens = int(sys.argv[2]), int(sys.argv[3])
client = NodeClient(grpc.insecure_channel(f"127.0.0.1:{port}"))
chunks = [0]
def count(stream):
    def counted(*args, **kwargs):
        for chunk in stream(*args, **kwargs):
            chunks[0] += 1
            yield chunk
    return counted
client.stub.Generate = count(client.stub.Generate)
def ask(i):
    prompt = Prompt(user=sensor_prompt(i), rendered="", n_tokens=0)
    return client.generate(prompt, max_tokens, time.perf_counter(), 0, i)
ask(10_000)  # warm-up
print("warm", flush=True)
for line in sys.stdin:  # "first count": prompts first .. first+count-1, one after another
    first, count = map(int, line.split())
    chunks[0] = 0
    records = [ask(first + i) for i in range(count)]
    print(json.dumps([[r.completion_tokens, r.t_send, r.t_first, r.t_end, chunks[0]] for r in records]), flush=True)
"""


class Timers:
    """Wall time per named part, on whatever thread calls; wrappers are put on from outside."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)  # the calling thread's CPU time
        self.calls: dict[str, int] = defaultdict(int)
        self.on = False

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        total, cpu, calls, clock, tclock = self.total, self.cpu, self.calls, time.perf_counter, time.thread_time

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            t, c = clock(), tclock()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu[name] += tclock() - c
                total[name] += clock() - t
                calls[name] += 1

        return timed

    def reset(self) -> None:
        self.total.clear()
        self.cpu.clear()
        self.calls.clear()


BASELINE = [False]  # the config measured now is the baseline (the path as it was before issue 26's c=1 work)


def instrument(node: Any, timers: Timers) -> None:
    from edgefleet.node.engine import engine as engine_mod
    from edgefleet.node.engine import llama_backend, sampler, text_stream

    eng = node.engine
    eng._step = timers.wrap("step (all)", eng._step)
    eng._emit = timers.wrap("emit (sink: channel put + wake)", eng._emit)
    sched = eng.scheduler
    for name in ("schedule", "decoded", "sampled"):
        setattr(sched, name, timers.wrap("scheduler", getattr(sched, name)))
    eng.model.piece = timers.wrap("piece (token bytes)", eng.model.piece)
    eng.model.is_eog = timers.wrap("is_eog", eng.model.is_eog)
    fast_sample = sampler.Sampler.sample

    def sample(self: Any, ctx: Any, idx: int) -> int:
        if BASELINE[0]:  # llama.cpp's sampler chain for every request, greedy too (as before)
            return int(llama_backend.llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, idx))
        return fast_sample(self, ctx, idx)

    sampler.Sampler.sample = timers.wrap("sample", sample)
    llama_backend.DecodeContext.decode = timers.wrap("llama_decode", llama_backend.DecodeContext.decode)
    text_stream.TextStream.feed = timers.wrap("text stream (utf-8, stops)", text_stream.TextStream.feed)
    engine_mod.TextStream = text_stream.TextStream  # the engine's own name for it


def thread_cpu(pid: int) -> dict[int, float]:
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def thread_names() -> dict[int, str]:
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        names.setdefault(int(tid), comm)
    return names


def classify(tid: int, names: dict[int, str]) -> str:
    name = names.get(tid, "?")
    if tid == threading.main_thread().native_id:
        return "asyncio loop (main)"
    if name.startswith("edgefleet-engine"):
        return "engine thread"
    if name.startswith("edgefleet-admit"):
        return "admission"
    if "grpc" in name.lower() or name.startswith("default-executo") or name.startswith("resolver"):
        return f"grpc ({name})"
    return f"other ({name})"


class InProcess:
    """bench/inprocess.py's worker (llama_cpp.Llama.create_completion, streamed), the same prompts."""

    def __init__(self, max_tokens: int) -> None:
        from bench.prompts import model_path

        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "run_bench.py"), "--worker", "inprocess"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT / "bench",
        )
        self.path = model_path()
        self._send({"model": str(self.path), "max_tokens": max_tokens, "flash_attn": True})
        self._read()

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("in-process worker exited")
        return dict(json.loads(line))

    def run(self, users: list[str]) -> tuple[list[list[float]], float]:
        from dataclasses import asdict

        from bench.prompts import render_prompts

        prompts, _ = render_prompts(self.path, users)
        cpu0 = _proc_cpu(self.proc.pid)
        self._send({"plan": [[asdict(p) for p in prompts]]})
        recs = self._read()["records"]
        cpu = _proc_cpu(self.proc.pid) - cpu0
        return [[r["completion_tokens"], r["t_send"], r["t_first"], r["t_end"]] for r in recs], cpu

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _config_name(spec: str) -> str:
    if spec == "base":
        return "node baseline"
    name = f"node {float(spec.rstrip('r')):g} ms"
    return name + " gil-releasing wake" if spec.endswith("r") else name


def _figures(records: list[list[float]], wall: float) -> dict[str, Any]:
    tokens = sum(r[0] for r in records)
    return {
        "tokens": tokens,
        "requests": len(records),
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "mean_ttft_ms": 1000 * sum(r[2] - r[1] for r in records) / len(records),
    }


async def serve_and_measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import grpc

    from bench.prompts import sensor_prompt
    from bench.servers import node_profile
    from bench.settings import THREADS
    from edgefleet.node.api import loop_waker
    from edgefleet.node.api.servicer import InferenceServicer
    from edgefleet.node.runtime import build_node
    from edgefleet.node.settings import NodeSettings
    from edgefleet.proto.v1 import inference_pb2_grpc

    gil_keeping_write = loop_waker._write
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-c1-"))
    os.environ["EDGEFLEET_RESPONSE_CACHE"] = "false"
    settings = NodeSettings(
        profile=str(node_profile(tmp)),
        data_dir=tmp / "data",
        threads=args.threads or THREADS,
        knowledge=False,
        insecure=True,
        adapt_threads=not args.fixed_threads,
    )
    node = build_node(settings)
    timers = Timers()
    if not args.no_timers:
        instrument(node, timers)
    server = grpc.aio.server()
    servicer = InferenceServicer(node.service)
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(ROOT), str(port), str(args.max_tokens)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    inproc = InProcess(args.max_tokens) if args.inprocess else None
    assert client.stdin is not None and client.stdout is not None
    # "20": stream interval 20 ms; "0r": 0 ms with the loop woken by a GIL-releasing os.write (as before)
    configs = [_config_name(g) for g in args.intervals.split(",")]
    if inproc is not None:
        configs.append("inprocess")
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    prof = cProfile.Profile() if args.cprofile_loop else None
    try:
        line = await asyncio.to_thread(client.stdout.readline)
        if line.strip() != "warm":
            raise RuntimeError(f"client failed to warm up: {line!r}")
        first = 0
        for rnd in range(args.repeats):
            order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]  # rotate: no drift favours one
            for config in order:
                first += args.requests
                if config == "inprocess":
                    assert inproc is not None
                    users = [sensor_prompt(first + i) for i in range(args.requests)]
                    t0 = time.perf_counter()
                    recs, cpu = await asyncio.to_thread(inproc.run, users)
                    r = _figures(recs, recs[-1][3] - recs[0][1])
                    r["cpu_us_per_token"] = {"in-process worker (all threads)": 1e6 * cpu / r["tokens"]}
                    results[config].append(r)
                    continue
                BASELINE[0] = config == "node baseline"
                gap_ms = 0.0 if BASELINE[0] else float(config.split()[1])
                object.__setattr__(node.service.settings, "stream_interval_ms", gap_ms)
                loop_waker._write = None if config.endswith("wake") or BASELINE[0] else gil_keeping_write
                timers.reset()
                timers.on = True
                cpu0, ccpu0, loop0 = thread_cpu(os.getpid()), _proc_cpu(client.pid), time.thread_time()
                if prof is not None:
                    prof.enable()
                t0 = time.perf_counter()
                client.stdin.write(f"{first} {args.requests}\n")
                client.stdin.flush()
                out = await asyncio.to_thread(client.stdout.readline)
                wall = time.perf_counter() - t0
                if prof is not None:
                    prof.disable()
                timers.on = False
                cpu1, ccpu1, loop1 = thread_cpu(os.getpid()), _proc_cpu(client.pid), time.thread_time()
                names = thread_names()
                recs = json.loads(out)
                r = _figures(recs, wall)
                r["tokens_per_chunk"] = r["tokens"] / max(recs[-1][4], 1)
                by_kind: dict[str, float] = defaultdict(float)
                for tid, t in cpu1.items():
                    by_kind[classify(tid, names)] += t - cpu0.get(tid, 0.0)
                by_kind["client process (all threads)"] = ccpu1 - ccpu0
                by_kind["asyncio loop (main)"] = loop1 - loop0  # thread_time: finer than psutil's ticks
                n = r["tokens"]
                r["engine_us_per_token"] = {k: 1e6 * v / n for k, v in sorted(timers.total.items())}
                r["engine_cpu_us_per_token"] = {k: 1e6 * v / n for k, v in sorted(timers.cpu.items())}
                r["cpu_us_per_token"] = {k: 1e6 * v / n for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}
                results[config].append(r)
            print(
                f"round {rnd + 1}: " + ", ".join(f"{c} {results[c][-1]['tokens_per_s']:.1f} tok/s" for c in configs),
                flush=True,
            )
    finally:
        client.kill()
        client.wait()
        if inproc is not None:
            inproc.close()
        await server.stop(1)
        servicer.close()
        node.close()
    out_list = []
    for config, runs in results.items():
        med = _median_run(runs)
        med["config"] = config
        med["all_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in runs]
        out_list.append(med)
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        out_list[0]["loop_profile"] = s.getvalue()
    return out_list


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s (its split with it), figures averaged over none."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return dict(ranked[len(ranked) // 2])


def _proc_cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def report(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(
            f"\n== {r['config']}: median of {r['all_tokens_per_s']} tokens/s: {r['tokens_per_s']:.1f} tokens/s, "
            f"{1e6 / r['tokens_per_s']:.0f} us/token wall, mean TTFT {r['mean_ttft_ms']:.1f} ms, "
            f"{r.get('tokens_per_chunk', 0):.2f} tokens per chunk "
            f"({r['requests']} requests, {r['tokens']} tokens)"
        )
        if r.get("engine_us_per_token"):
            e = dict(r["engine_us_per_token"])
            step = e.pop("step (all)", 0.0)
            parts = sum(e.values())
            c = dict(r.get("engine_cpu_us_per_token", {}))
            cstep = c.pop("step (all)", 0.0)
            print(f"engine thread, us per token (timers):    {'wall':>8s} {'cpu':>8s}")
            for k, v in sorted(e.items(), key=lambda kv: -kv[1]):
                print(f"  {k:36s} {v:8.1f} {c.get(k, 0.0):8.1f}")
            print(f"  {'rest of the step':36s} {step - parts:8.1f} {cstep - sum(c.values()):8.1f}")
            print(f"  {'step total':36s} {step:8.1f} {cstep:8.1f}")
            print(f"  {'between steps (wait, commands)':36s} {1e6 / r['tokens_per_s'] - step:8.1f}")
        print("CPU us per token, by thread:")
        for k, v in r["cpu_us_per_token"].items():
            if v >= 0.5:
                print(f"  {k:36s} {v:8.1f}")
    base = next((r for r in results if r["config"] == "inprocess"), None)
    if base is not None:
        print()
        for r in results:
            if r is not base:
                print(
                    f"{r['config']} / inprocess c=1: {r['tokens_per_s'] / base['tokens_per_s']:.3f} tokens/s, "
                    f"TTFT {r['mean_ttft_ms'] / base['mean_ttft_ms']:.2f}"
                )
    if "loop_profile" in results[0]:
        print("\nasyncio loop thread, cProfile (tottime):")
        print(results[0]["loop_profile"])


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=8, help="measured requests, one after another (default 8)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="compute threads (default: the bench's)")
    ap.add_argument(
        "--intervals",
        default="base,0",
        help="node configs to compare, comma separated: a stream interval in ms; '0r': 0 ms, waking the loop "
        "with a GIL-releasing write, as call_soon_threadsafe does; 'base': 0r and llama.cpp's sampler for "
        "greedy too, the path before this work (default base,0)",
    )
    ap.add_argument("--inprocess", action="store_true", help="also the in-process llama.cpp worker, same prompts")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each config once a round, rotating (default 3)")
    ap.add_argument(
        "--fixed-threads",
        action="store_true",
        help="no thread governor: the node keeps --threads, as in-process and llama-server do",
    )
    ap.add_argument("--no-timers", action="store_true", help="no timers on the engine: throughput alone")
    ap.add_argument("--cprofile-loop", action="store_true", help="cProfile the asyncio loop thread")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    result = asyncio.run(serve_and_measure(args))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
