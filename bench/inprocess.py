"""The in-process backend: llama_cpp.Llama in a worker process, and the worker's side of the pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from bench.backend import Backend
from bench.cpu_load import CpuAccount
from bench.prompts import Prompt
from bench.records import RequestRecord
from bench.settings import (
    BENCH_DIR,
    GPU_LAYERS,
    N_BATCH,
    N_CTX_SLOT,
    REPEAT_PENALTY,
    SEED,
    START_TIMEOUT_S,
    TEMPERATURE,
    THREADS,
    TOP_K,
    TOP_P,
)

WORKER_SCRIPT = BENCH_DIR / "run_bench.py"  # run with --worker inprocess


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
        model_path=cfg["model"],
        n_ctx=N_CTX_SLOT,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_gpu_layers=GPU_LAYERS,
        flash_attn=cfg["flash_attn"],
        seed=SEED,
        verbose=False,
    )
    max_tokens = cfg["max_tokens"]

    def one(prompt: dict[str, Any]) -> tuple[float, float, int, str, bool]:
        t_first = 0.0
        pieces: list[str] = []
        finish = None
        chunk: Any
        for chunk in llm.create_completion(
            prompt["rendered"],
            max_tokens=max_tokens,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            top_k=TOP_K,
            seed=SEED,
            repeat_penalty=REPEAT_PENALTY,
            stream=True,
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
                records.append(
                    {
                        "client": c,
                        "round": r,
                        "prompt_tokens": p["n_tokens"],
                        "completion_tokens": toks,
                        "finish": finish,
                        "t_send": sent - t0,
                        "t_first": t_first - t0,
                        "t_end": t_end - t0,
                        "tokens_exact": exact,
                        "expected_prompt_tokens": p["n_tokens"],
                    }
                )
        out.write(json.dumps({"records": records}) + "\n")
    llm.close()
    return 0


class InProcessBackend(Backend):
    name = "inprocess"
    worker = "inprocess"  # run_bench.py --worker <this>
    note = (
        "one context; the requests of a level run back to back on one thread, in the "
        "order of a FIFO server; TTFT includes the wait behind the other clients"
    )

    def start(self) -> None:
        cmd = [sys.executable, str(WORKER_SCRIPT), "--worker", self.worker]
        t_start = time.perf_counter()
        proc = self._spawn(cmd, BENCH_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert proc.stdin is not None
        proc.stdin.write(
            json.dumps(
                {
                    "model": str(self.ctx.model),
                    "max_tokens": self.ctx.args.max_tokens,
                    "flash_attn": self.ctx.args.flash_attn == "on",
                }
            )
            + "\n"
        )
        self._reply(START_TIMEOUT_S)
        self.info["start_s"] = round(time.perf_counter() - t_start, 3)
        self.info["note"] = self.note
        print(f"  {self.worker} worker ready in {self.info['start_s']:.2f} s", flush=True)

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
