"""Tool-calling evaluation through the front door, per bundled model, with and without enforcement.

    .venv/bin/python -m bench.tool_eval [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
        [--choices required,auto] [--modes enforced,free] [--limit N] [--max-tokens 160] [--threads 1]
        [--stream] [--parallel] [--insecure] [--out bench/results]

Starts a real site (Mosquitto, one node per model with the x86-dev profile, an orchestrator with its
front door; bench/tool_site.py) and sends every task of bench/tool_tasks.json (plant-floor requests
over seven site tools) through the front door's OpenAI API with the official `openai` client:
temperature 0, the set's system message, its tools, `tool_choice` required or auto, one call
(`parallel_tool_calls` false unless --parallel). `enforced`: the node's grammar holds the call to
its tool's schema; `free`: `extra_body={"tools_unconstrained": true}` (evaluation only), the model's
own text parsed as it comes. Each answer is scored by bench/tool_scoring.py (call, valid, right
tool, right arguments, OpenAI shape); the table gives the rates and the mean wall time per task as
the client saw it. gemma-3-270m is not in the default set: a base model without a chat template,
its chat requests (the only ones that carry tools) are refused with a 400 ("has no chat template;
send a raw prompt"); `--models gemma-3-270m` shows it. Every answer goes to
bench/results/tool-eval-<UTC>.json (rewritten after each row).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from bench.site_security import BenchSecurity, add_insecure_flag  # noqa: E402
from bench.tool_scoring import TASKS_FILE, Call, Score, Task, TaskSet, load_tasks, score  # noqa: E402
from bench.tool_site import ToolSite, model_label  # noqa: E402

# qwen2.5-coder-1.5b-instruct is optional (EDGEFLEET_SETUP_LARGE_MODELS=1 scripts/setup), so not a default
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m", "qwen2.5-coder-1.5b-instruct")
DEFAULT_MODELS = "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct"


@dataclass
class Outcome:
    task: str
    ms: float
    calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = None
    content: str = ""
    error: str = ""
    score: Score | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _request(
    ts: TaskSet, model: str, task: Task, choice: str, enforced: bool, args: argparse.Namespace
) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": ts.system}, {"role": "user", "content": task.user}],
        "tools": ts.openai_tools(),
        "tool_choice": choice,
        "parallel_tool_calls": args.parallel,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "seed": 7,
    }
    if not enforced:
        kw["extra_body"] = {"tools_unconstrained": True}
    return kw


def _streamed(client: openai.OpenAI, kw: dict[str, Any], out: Outcome) -> None:
    """Gather `delta.tool_calls` by index (id and name once, arguments in pieces) and the content."""
    parts: dict[int, dict[str, str]] = {}
    text: list[str] = []
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    for chunk in stream:
        if chunk.usage is not None:
            out.prompt_tokens, out.completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            for d in choice.delta.tool_calls or []:
                p = parts.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                p["id"] = p["id"] or (d.id or "")
                if d.function is not None:
                    p["name"] = p["name"] or (d.function.name or "")
                    p["arguments"] += d.function.arguments or ""
            out.finish_reason = choice.finish_reason or out.finish_reason
    out.calls = [Call(p["id"], p["name"], p["arguments"]) for _, p in sorted(parts.items())]
    out.content = "".join(text)


def ask(client: openai.OpenAI, ts: TaskSet, model: str, task: Task, choice: str, enforced: bool,
        args: argparse.Namespace) -> Outcome:  # fmt: skip
    kw = _request(ts, model, task, choice, enforced, args)
    out = Outcome(task.id, 0.0)
    started = time.perf_counter()
    try:
        if args.stream:
            _streamed(client, kw, out)
        else:
            r = client.chat.completions.create(**kw)
            msg = r.choices[0].message
            out.calls = [Call(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls or []]
            out.finish_reason, out.content = r.choices[0].finish_reason, msg.content or ""
            if r.usage is not None:
                out.prompt_tokens, out.completion_tokens = r.usage.prompt_tokens, r.usage.completion_tokens
    except openai.APIError as e:
        out.error = f"{type(e).__name__}: {e}"[:300]
    out.ms = (time.perf_counter() - started) * 1000
    if not out.error:
        out.score = score(ts, task, out.calls, out.finish_reason, out.content)
    return out


def rates(outcomes: list[Outcome]) -> dict[str, float]:
    n = len(outcomes) or 1
    scored = [o.score for o in outcomes if o.score is not None]
    return {
        "call": sum(s.call for s in scored) / n,
        "valid": sum(s.valid for s in scored) / n,
        "right_tool": sum(s.right_tool for s in scored) / n,
        "right_args": sum(s.right_args for s in scored) / n,
        "shape": sum(s.shape for s in scored) / n,
        "errors": sum(bool(o.error) for o in outcomes),
        "mean_ms": statistics.mean(o.ms for o in outcomes) if outcomes else 0.0,
    }


HEADER = (
    f"| {'model':29} | choice   | mode     | tasks | call | valid | right tool | right args | shape | errors "
    f"| mean ms |\n|{'-' * 31}|----------|----------|-------|------|-------|------------|------------|-------|"
    f"--------|---------|"
)


def row(model: str, choice: str, mode: str, outcomes: list[Outcome]) -> str:
    r = rates(outcomes)
    return (
        f"| {model:29} | {choice:8} | {mode:8} | {len(outcomes):5} | {r['call']:4.2f} | {r['valid']:5.2f} "
        f"| {r['right_tool']:10.2f} | {r['right_args']:10.2f} | {r['shape']:5.2f} | {r['errors']:6.0f} "
        f"| {r['mean_ms']:7.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {', '.join(MODELS)} or GGUF paths")
    p.add_argument("--choices", default="required,auto", help="tool_choice values: required, auto")
    p.add_argument("--modes", default="enforced,free", help="enforced (grammar) and/or free (tools_unconstrained)")
    p.add_argument("--limit", type=int, default=0, help="only the first N tasks (0: all)")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--threads", type=int, default=1, help="EDGEFLEET_THREADS of each node")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per request")
    p.add_argument("--stream", action="store_true", help="stream every answer (delta.tool_calls)")
    p.add_argument("--parallel", action="store_true", help="parallel_tool_calls true (default false: one call)")
    p.add_argument("--tasks", type=Path, default=TASKS_FILE, help="the task set (tool_tasks_heldout.json: held out)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    add_insecure_flag(p)
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    choices = [c for c in args.choices.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    for m in models:
        if m not in MODELS and not (m.endswith(".gguf") and Path(m).is_file()):
            p.error(f"--models: {m!r} is neither a bundled model ({', '.join(MODELS)}) nor a GGUF file")
    if not set(choices) <= {"required", "auto"} or not set(modes) <= {"enforced", "free"}:
        p.error("--choices takes required,auto and --modes enforced,free")
    ts = load_tasks(args.tasks)
    tasks = ts.tasks[: args.limit] if args.limit else ts.tasks
    command = shlex.join([".venv/bin/python", "-m", "bench.tool_eval", *(sys.argv[1:] if argv is None else argv)])
    print(f"command: {command}")
    print(f"{len(tasks)} tasks over {len(ts.tools)} tools; {os.cpu_count()} CPUs; node threads {args.threads}; "
          f"{'streamed' if args.stream else 'not streamed'}; max_tokens {args.max_tokens}", flush=True)  # fmt: skip
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"tool-eval-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    config = {"command": command, "tasks": len(tasks), "threads": args.threads, "stream": args.stream,
              "parallel": args.parallel, "max_tokens": args.max_tokens, "cpus": os.cpu_count()}  # fmt: skip
    with BenchSecurity(args.insecure) as security, tempfile.TemporaryDirectory(prefix="edgefleet-tool-eval-") as d:
        started = time.monotonic()
        site = ToolSite(Path(d), security, models, args.threads)
        try:
            print(f"site up in {time.monotonic() - started:.1f} s ({security.mode}): {site.nodes}", flush=True)
            client = site.client(args.timeout)
            print(HEADER, flush=True)
            for model in map(model_label, models):
                ask(client, ts, model, tasks[0], "required", True, args)  # warm the prefix (system + tools)
                for choice in choices:
                    for mode in modes:
                        outcomes = [ask(client, ts, model, t, choice, mode == "enforced", args) for t in tasks]
                        lines.append(row(model, choice, mode, outcomes))
                        print(lines[-1], flush=True)
                        results.append({"model": model, "tool_choice": choice, "mode": mode, **rates(outcomes),
                                        "outcomes": [asdict(o) for o in outcomes]})  # fmt: skip
                        path.write_text(json.dumps({"config": config, "results": results}, indent=1, default=str))
                        errors = [o.error for o in outcomes if o.error]
                        if errors:
                            print(f"  first error: {errors[0]}", flush=True)
        finally:
            site.close()
    print(f"\ncommand: {command}\n{HEADER}\n" + "\n".join(lines))
    print(f"answers: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
