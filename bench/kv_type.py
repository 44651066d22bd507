"""KV cache type: f16 against q8_0 per bundled model, through the node's own code (in-process).

    .venv/bin/python -m bench.kv_type [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
        [--prompts 20] [--max-tokens 64] [--tool-tasks 0 (all)] [--threads 1] [--profile x86-dev]
        [--data-dir DIR] [--out bench/results]

For each model it builds a real node in this process (node/runtime.py `build_node`: profile, memory
check, engine, NodeService; no gRPC, no MQTT) once with EDGEFLEET_KV_TYPE=f16 and once with q8_0, and
reports side by side:

- KV bytes for each shipped profile's slots x n_ctx (node/profiles.py `estimate_memory_bytes`), and
  the KV buffer llama.cpp itself allocated for the run's context (its log line), f16 and q8_0;
- slots the Raspberry Pi 4 profile could hold within its memory budget (model + overhead + slots x
  n_ctx KV <= budget_mb; the profile schema caps slots at 64);
- greedy agreement: the same text, token for token, for `--prompts` sensor prompts (bench/prompts.py),
  and where they differ, the characters they share first;
- tool calls on bench/tool_tasks.json (tool_choice required, the node's grammar, temperature 0):
  valid calls, right tool, right arguments (bench/tool_scoring.py), and the calls identical to f16's.

It prints the command and the table and writes bench/results/kv-type-<UTC>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.prompts import sensor_prompt  # noqa: E402
from bench.tool_scoring import Call, TaskSet, load_tasks, score  # noqa: E402
from edgefleet.node.engine.kv_type import KV_TYPES, kv_bytes_per_token  # noqa: E402
from edgefleet.node.engine.types import Event, Failed, Finished, TextDelta, ToolCallDelta  # noqa: E402
from edgefleet.node.errors import ProfileError  # noqa: E402
from edgefleet.node.model_catalog import CATALOG, resolve_model  # noqa: E402
from edgefleet.node.profiles import MiB, builtin_profiles, estimate_memory_bytes, load_profile_file  # noqa: E402
from edgefleet.node.runtime import Node, build_node  # noqa: E402
from edgefleet.node.service_types import ChatTurn, GenerateInput  # noqa: E402
from edgefleet.node.settings import NodeSettings  # noqa: E402
from edgefleet.node.tool_calls.types import ToolChoice, ToolDef  # noqa: E402

DEFAULT_MODELS = "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct"
PI4 = "rpi4-4gb"
MAX_SLOTS = 64  # node/profiles.py ContextSection.slots
IN_FLIGHT = 4
ANSWER_TIMEOUT_S = 900.0  # one model and KV type's prompts or tool tasks
_FA_LOG = re.compile(r"flash_attn\s*=\s*(.+)$")
_KV_LOG = re.compile(r"llama_kv_cache:\s+\S+\s+KV buffer size\s*=\s*([0-9.]+)\s*MiB")


@dataclass
class Answer:
    text: str = ""
    calls: list[Call] = field(default_factory=list)
    finish: str = ""
    error: str = ""
    tokens_per_s: float = 0.0
    ttft_ms: float = 0.0


@dataclass
class Run:
    model: str
    kv_type: str  # as asked
    kv_type_served: str = ""  # what the engine got (f16 after a fallback)
    llama_kv_mib: float = 0.0  # llama.cpp's KV buffers for this run's context
    flash_attn: str = ""  # llama.cpp's own word on flash attention for the run's context
    greedy_s: float = 0.0
    tools_s: float = 0.0
    greedy: list[Answer] = field(default_factory=list)
    tools: list[Answer] = field(default_factory=list)


class _KvLog(logging.Handler):
    """Adds up llama.cpp's `KV buffer size = X MiB` lines (one per buffer) while a node starts."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.mib = 0.0
        self.flash_attn = ""

    def emit(self, record: logging.LogRecord) -> None:
        m = _KV_LOG.search(record.getMessage())
        if m:
            self.mib += float(m.group(1))
        fa = _FA_LOG.search(record.getMessage())
        if fa:
            self.flash_attn = fa.group(1).strip()


def _collect(node: Node, inputs: list[GenerateInput], tag: str) -> list[Answer]:
    """Every input through NodeService.generate, IN_FLIGHT at a time; answers in input order."""
    answers = [Answer() for _ in inputs]
    gate = threading.Semaphore(IN_FLIGHT)
    done = [threading.Event() for _ in inputs]
    pending: dict[int, dict[int, list[str]]] = {i: {} for i in range(len(inputs))}

    def sink_for(i: int) -> Any:
        def sink(ev: Event) -> None:
            a = answers[i]
            if isinstance(ev, TextDelta):
                a.text += ev.text
            elif isinstance(ev, ToolCallDelta):
                part = pending[i].setdefault(ev.index, [ev.id, ev.name, ""])
                part[2] += ev.arguments
            elif isinstance(ev, Finished | Failed):
                if isinstance(ev, Finished):
                    a.text += ev.text_tail
                    a.finish = str(ev.reason)
                    a.tokens_per_s = ev.usage.tokens_per_second
                    a.ttft_ms = ev.usage.time_to_first_token_ms
                else:
                    a.error = str(ev.error)
                a.calls = [Call(p[0], p[1], p[2]) for _, p in sorted(pending[i].items())]
                gate.release()
                done[i].set()

        return sink

    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    for i, inp in enumerate(inputs):
        if not gate.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError(f"{tag}: no answer within {ANSWER_TIMEOUT_S:.0f} s (engine: {node.engine.failure!r})")
        node.service.generate(inp, f"{tag}-{i}", sink_for(i), time.monotonic())
    for d in done:
        if not d.wait(max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError(f"{tag}: no answer within {ANSWER_TIMEOUT_S:.0f} s (engine: {node.engine.failure!r})")
    return answers


def _settings(model: str, kv_type: str, profile: str, threads: int, data_dir: Path) -> NodeSettings:
    return NodeSettings(
        insecure=True,
        profile=profile,
        model=model,
        kv_type=kv_type,
        threads=threads,
        adapt_threads=False,
        data_dir=data_dir,
        knowledge=False,
        agents=False,
        response_cache=False,
        prefix_cache=True,
        update_lock_file=None,
        default_max_tokens=64,
    )


def run_one(model: str, kv_type: str, args: argparse.Namespace, ts: TaskSet) -> Run:
    run = Run(model, kv_type)
    kv_log = _KvLog()
    llama_log = logging.getLogger("edgefleet.llama")
    llama_log.addHandler(kv_log)
    llama_log.setLevel(logging.DEBUG)
    try:
        node = build_node(_settings(model, kv_type, args.profile, args.threads, args.data_dir))
    finally:
        llama_log.removeHandler(kv_log)
    try:
        run.kv_type_served = node.service.status().kv_type
        run.llama_kv_mib = kv_log.mib
        run.flash_attn = kv_log.flash_attn
        start = time.monotonic()
        prompts = [
            GenerateInput(messages=(ChatTurn("user", sensor_prompt(i)),), max_tokens=args.max_tokens, temperature=0.0)
            for i in range(args.prompts)
        ]
        run.greedy = _collect(node, prompts, f"greedy-{kv_type}")
        run.greedy_s = time.monotonic() - start
        start = time.monotonic()
        tools = tuple(ToolDef(t["name"], t["description"], t["parameters"]) for t in ts.tools)
        tasks = ts.tasks[: args.tool_tasks] if args.tool_tasks else ts.tasks
        asks = [
            GenerateInput(
                messages=(ChatTurn("system", ts.system), ChatTurn("user", task.user)),
                max_tokens=args.tool_max_tokens,
                temperature=0.0,
                tools=tools,
                tool_choice=ToolChoice("required"),
                parallel_tool_calls=False,
            )
            for task in tasks
        ]
        run.tools = _collect(node, asks, f"tools-{kv_type}")
        run.tools_s = time.monotonic() - start
    finally:
        node.close()
    return run


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def memory_rows(model: str, data_dir: Path) -> list[dict[str, Any]]:
    """KV bytes per shipped profile and slots that fit the Pi 4 budget, from the node's own estimate."""
    from edgefleet.node.engine.llama_backend import LoadedModel

    mf = resolve_model(model, data_dir)
    loaded = LoadedModel(mf.path)
    try:
        f16_per_token = loaded.meta.kv_bytes_per_token()
    finally:
        loaded.close()
    rows = []
    for name, path in builtin_profiles().items():
        try:
            prof = load_profile_file(path)
        except ProfileError as e:  # a profile naming a model this checkout's catalog lacks
            logging.getLogger("bench.kv_type").warning("profile skipped: %s", e)
            continue
        row: dict[str, Any] = {"profile": name, "slots": prof.context.slots, "n_ctx": prof.context.n_ctx}
        for kv in KV_TYPES:
            est = estimate_memory_bytes(_with(prof, kv), mf.size, f16_per_token)
            row[f"kv_{kv}"] = est["kv_cache"]
            if name == PI4:
                free = est["budget"] - est["model"] - est["overhead"]
                per_slot = kv_bytes_per_token(f16_per_token, kv) * prof.context.n_ctx
                row[f"max_slots_{kv}"] = max(0, free // per_slot)
        rows.append(row)
    return rows


def _with(prof: Any, kv: str) -> Any:
    from edgefleet.node.profiles import with_kv_type

    return with_kv_type(prof, kv)


def compare(base: Run, other: Run, ts: TaskSet) -> dict[str, Any]:
    same = [a.text == b.text for a, b in zip(base.greedy, other.greedy, strict=True)]
    firsts = [
        _shared_prefix(a.text, b.text) for a, b in zip(base.greedy, other.greedy, strict=True) if a.text != b.text
    ]
    tasks = ts.tasks[: len(other.tools)]

    def rates(run: Run) -> dict[str, float]:
        scores = [score(ts, t, a.calls, a.finish, a.text) for t, a in zip(tasks, run.tools, strict=True)]
        n = max(len(scores), 1)
        return {
            "valid": sum(s.valid for s in scores) / n,
            "right_tool": sum(s.right_tool for s in scores) / n,
            "right_args": sum(s.right_args for s in scores) / n,
        }

    def call_key(a: Answer) -> list[tuple[str, Any]]:
        out = []
        for c in a.calls:
            try:
                args: Any = json.loads(c.arguments)
            except ValueError:
                args = c.arguments
            out.append((c.name, json.dumps(args, sort_keys=True)))
        return out

    same_calls = [call_key(a) == call_key(b) for a, b in zip(base.tools, other.tools, strict=True)]
    return {
        "greedy_same": sum(same),
        "greedy_n": len(same),
        "first_diff_chars": firsts,
        "tools_base": rates(base),
        "tools_other": rates(other),
        "tool_calls_same": sum(same_calls),
        "tool_n": len(same_calls),
        "errors": [a.error for a in other.greedy + other.tools if a.error],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--tool-tasks", type=int, default=0, help="first N tasks of bench/tool_tasks.json; 0: all")
    p.add_argument("--tool-max-tokens", type=int, default=160)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", default="x86-dev", help="the profile the runs use (slots, n_ctx, n_batch)")
    p.add_argument("--data-dir", type=Path, default=None, help="where catalog models are assembled")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgefleet.llama").propagate = False  # its debug lines only feed _KvLog
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CATALOG]
    if unknown:
        p.error(f"--models: {', '.join(unknown)} not in the catalog ({', '.join(CATALOG)})")
    if args.data_dir is None:
        args.data_dir = Path(tempfile.gettempdir()) / "edgefleet-bench-kv"
    ts = load_tasks()
    command = "python -m bench.kv_type " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(f"$ {command}", flush=True)
    result: dict[str, Any] = {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    lines = []
    for model in models:
        runs = {kv: run_one(model, kv, args, ts) for kv in KV_TYPES}
        cmp = compare(runs["f16"], runs["q8_0"], ts)
        mem = memory_rows(model, args.data_dir)
        result["models"][model] = {"runs": {k: asdict(r) for k, r in runs.items()}, "compare": cmp, "memory": mem}
        lines.append(table(model, runs, cmp, mem))
        print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"kv-type-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\n$ {command}\n" + "\n".join(lines) + f"\nwrote {out}")
    return 0


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def table(model: str, runs: dict[str, Run], cmp: dict[str, Any], mem: list[dict[str, Any]]) -> str:
    f16, q8 = runs["f16"], runs["q8_0"]
    tb, to = cmp["tools_base"], cmp["tools_other"]
    out = [f"\n## {model}", "| | f16 | q8_0 | q8_0 / f16 |", "|---|---|---|---|"]
    out.append(f"| served as | {f16.kv_type_served} | {q8.kv_type_served} | |")
    ratio = q8.llama_kv_mib / f16.llama_kv_mib if f16.llama_kv_mib else 0.0
    out.append(
        f"| llama.cpp KV buffers (run's context) | {f16.llama_kv_mib:.1f} MiB | {q8.llama_kv_mib:.1f} MiB "
        f"| {ratio:.3f} |"
    )
    for row in mem:
        out.append(
            f"| KV estimate {row['profile']} ({row['slots']} x {row['n_ctx']}) | {_mib(row['kv_f16'])} "
            f"| {_mib(row['kv_q8_0'])} | saves {_mib(row['kv_f16'] - row['kv_q8_0'])} |"
        )
        if "max_slots_f16" in row:
            a, b = row["max_slots_f16"], row["max_slots_q8_0"]
            out.append(
                f"| slots within the {row['profile']} budget (x {row['n_ctx']}) | {a} (cap {MAX_SLOTS}: "
                f"{min(a, MAX_SLOTS)}) | {b} (cap: {min(b, MAX_SLOTS)}) | +{b - a} |"
            )
    out.append(
        f"| greedy text identical to f16 | {cmp['greedy_n']}/{cmp['greedy_n']} "
        f"| {cmp['greedy_same']}/{cmp['greedy_n']} | first difference at chars {cmp['first_diff_chars']} |"
    )
    out.append(f"| tool calls valid | {tb['valid']:.1%} | {to['valid']:.1%} | |")
    out.append(f"| right tool | {tb['right_tool']:.1%} | {to['right_tool']:.1%} | |")
    out.append(f"| right arguments | {tb['right_args']:.1%} | {to['right_args']:.1%} | |")
    out.append(
        f"| tool calls identical to f16 | {cmp['tool_n']}/{cmp['tool_n']} "
        f"| {cmp['tool_calls_same']}/{cmp['tool_n']} | |"
    )
    out.append(f"| flash attention (llama.cpp) | {f16.flash_attn} | {q8.flash_attn} | |")
    tps = [statistics.median([a.tokens_per_s for a in r.greedy] or [0.0]) for r in (f16, q8)]
    out.append(
        f"| greedy tokens/s per request (median, {IN_FLIGHT} in flight) | {tps[0]:.1f} | {tps[1]:.1f} "
        f"| {tps[1] / tps[0] if tps[0] else 0.0:.2f} |"
    )
    out.append(
        f"| wall time greedy / tools | {f16.greedy_s:.0f} s / {f16.tools_s:.0f} s "
        f"| {q8.greedy_s:.0f} s / {q8.tools_s:.0f} s | |"
    )
    if cmp["errors"]:
        out.append(f"errors (q8_0): {cmp['errors'][:3]}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
