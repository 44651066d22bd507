"""Where mixing adapters loses: the cost of an adapter switch against the cost of smaller batches.

Drives the node's own llama.cpp pieces (LoadedModel, DecodeContext, as the engine builds them for the
x86-dev profile: 4 slots x 2048 tokens, n_batch 512) with the default model and two synthetic rank-16
LoRAs (tools/make_lora.py). Four sequences are prefilled with a short prompt, then decode steps of one
token per sequence are timed, the patterns taking turns round by round:
  batch 4 / 2 / 1 on adapter A            what a step costs by its rows, and by which slots they are in
                                          (llama.cpp decodes a batch over per-sequence KV streams in
                                          micro-batches of consecutive sequence ids: slots 0,2 are two)
  A and B alternating every q steps       set_adapters, the first decode after a switch against the
  (A in slots 0,2 and B in 1,3, or        steady ones in between, llama.cpp's own "reserve took" per
  A in 0,1 and B in 2,3)                  switch, and the tokens/s of the cycle
and, for each, the ratio to batch 4 on one adapter: what two groups of two can reach against one of four.
With --threads 1 (the default) the times are this thread's CPU time, which a busy host inflates less.

    .venv/bin/python bench/adapter_switch_profile.py [--steps 64] [--threads 1] [--quanta 1,4,16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgefleet.node.engine.llama_backend import DecodeContext, LoadedModel  # noqa: E402
from edgefleet.node.model_catalog import resolve_model  # noqa: E402
from tools.make_lora import write_lora  # noqa: E402

PROMPT = "Describe how a centrifugal pump works, step by step, and what wears out first."
RESERVE = re.compile(r"reserve took\s+([0-9.]+)\s*ms")


class ReserveLog(logging.Handler):
    """Collects llama.cpp's "sched_reserve: reserve took N ms" lines (its log goes through logging)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = RESERVE.search(record.getMessage())
        if m:
            self.ms.append(float(m.group(1)))


class Rig:
    def __init__(
        self, ctx: DecodeContext, prompt: list[int], loras: dict[str, Any], n_seq: int, ctx_threads: int
    ) -> None:
        self.ctx = ctx
        self.loras = loras
        self.current: str | None = None
        self.pos = [0] * n_seq
        self.prompt = prompt
        # threads=1: this thread's CPU time, which other processes on the cores do not inflate
        self.clock = time.thread_time if ctx_threads == 1 else time.perf_counter

    def use(self, name: str) -> float:
        """Set adapter `name` on the context if it is not set; seconds it took."""
        if name == self.current:
            return 0.0
        t = self.clock()
        self.ctx.set_lora(self.loras[name], 1.0)
        self.current = name
        return self.clock() - t

    def prefill(self, seq: int, adapter: str) -> None:
        self.use(adapter)
        self.ctx.seq_rm(seq)
        b = self.ctx.batch
        b.clear()
        for i, tok in enumerate(self.prompt):
            b.add(tok, i, seq, i == len(self.prompt) - 1)
        self.ctx.decode()
        self.pos[seq] = len(self.prompt)

    def step(self, seqs: list[int], adapter: str) -> tuple[float, float]:
        """One decode step of one token per sequence; (set_adapters seconds, decode seconds)."""
        s = self.use(adapter)
        b = self.ctx.batch
        b.clear()
        for seq in seqs:
            b.add(100 + seq, self.pos[seq], seq, True)
            self.pos[seq] += 1
        t = self.clock()
        self.ctx.decode()
        return s, self.clock() - t

    def rewind(self) -> None:
        """Drop the generated cells so every pattern decodes at the same positions."""
        for seq in range(len(self.pos)):
            self.ctx.seq_rm(seq, len(self.prompt), -1)
            self.pos[seq] = len(self.prompt)


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.2f}" if xs else "      -"


def run(steps: int, threads: int, quanta: list[int], repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        base = resolve_model("smollm2-135m-instruct", tmp / "data").path
        model = LoadedModel(base)
        handler = ReserveLog()
        llama_log = logging.getLogger("edgefleet.llama")
        llama_log.addHandler(handler)
        llama_log.setLevel(logging.DEBUG)
        loras = {
            "a": model.load_lora(write_lora(base, tmp / "a.gguf", rank=16, seed=1)),
            "b": model.load_lora(write_lora(base, tmp / "b.gguf", rank=16, seed=2)),
        }
        ctx = DecodeContext(model, 2048 * 4, 512, 4, threads)
        rig = Rig(ctx, model.tokenize(PROMPT), loras, 4, threads)
        for seq in range(4):
            rig.prefill(seq, "a" if seq % 2 == 0 else "b")
        rig.use("a")
        rig.step([0, 1, 2, 3], "a")  # warm: the graph for 4 rows
        rig.rewind()

        def steady(seqs: list[int]) -> list[float]:
            rig.use("a")
            rig.step(seqs, "a")  # graph for this shape built before timing
            rig.rewind()
            return [rig.step(seqs, "a")[1] for _ in range(steps)]

        def alternate(q: int, a: list[int], b: list[int]) -> tuple[list[float], ...]:
            """Groups a, b take q steps each in turn; (set, first decode, steady decodes, reserve seconds)."""
            sets: list[float] = []
            firsts: list[float] = []
            rest: list[float] = []
            handler.ms.clear()
            n = 0
            while n < steps:
                for name, seqs in (("a", a), ("b", b)):
                    for k in range(q):
                        s, d = rig.step(seqs, name)
                        (firsts if k == 0 else rest).append(d)
                        if k == 0:
                            sets.append(s)
                        n += 1
            return sets, firsts, rest, [x / 1000 for x in handler.ms]

        clock = "CPU ms of the engine thread" if threads == 1 else "wall ms"
        print(f"threads={threads}, {steps} steps per pattern and round, {repeats} interleaved rounds, {clock}")
        # llama.cpp splits a batch into micro-batches of consecutive sequence ids when each sequence has
        # its own KV stream (kv_unified off): seqs 0 and 2 decode as two micro-batches, 0 and 1 as one.
        shapes = {
            "batch 4, slots 0-3": [0, 1, 2, 3],
            "batch 2, slots 0,1": [0, 1],
            "batch 2, slots 0,2": [0, 2],
            "batch 1, slot 0": [0],
        }
        layouts = {"a=0,2 b=1,3": ([0, 2], [1, 3]), "a=0,1 b=2,3": ([0, 1], [2, 3])}
        plain: dict[str, list[float]] = {name: [] for name in shapes}
        alt: dict[tuple[str, int], tuple[list[float], ...]] = {
            (lay, q): ([], [], [], []) for lay in layouts for q in quanta
        }
        for _ in range(repeats):  # the patterns take turns, so a busy spell of the host hits them alike
            for name, seqs in shapes.items():
                plain[name] += steady(seqs)
                rig.rewind()
            for lay, (a, b) in layouts.items():
                for q in quanta:
                    for acc, got in zip(alt[(lay, q)], alternate(q, a, b), strict=True):
                        acc += got
                    rig.rewind()
        t4 = statistics.median(plain["batch 4, slots 0-3"])
        one = 4 / t4
        print(f"{'pattern (medians)':<30}{'set_ad':>8}{'1st dec':>8}{'steady':>8}{'reserve':>8}{'tok/s':>8}{'/b4':>6}")
        for name, seqs in shapes.items():
            rate = len(seqs) / statistics.median(plain[name])
            print(f"{name + ', A':<30}{'':>8}{'':>8}{ms(plain[name])}{'':>8}{rate:8.1f}{rate / one:6.2f}")
        for (lay, q), (sets, firsts, rest, reserves) in alt.items():
            # one cycle: each group's switch and first step, then its q-1 steady steps; 2 tokens a step
            cycle = 2 * (statistics.median(sets) + statistics.median(firsts))
            cycle += 2 * (q - 1) * (statistics.median(rest) if rest else 0.0)
            rate = 4 * q / cycle
            print(
                f"{f'A/B {lay}, q={q}':<30}{ms(sets)}{ms(firsts)}{ms(rest)}"
                f"{ms(reserves) + ' ' if reserves else '       -'}{rate:8.1f}{rate / one:6.2f}"
            )
        ctx.close()
        for h in loras.values():
            model.free_lora(h)
        model.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--steps", type=int, default=64, help="decode steps per pattern (default 64)")
    p.add_argument(
        "--threads", type=int, default=1, help="compute threads (default 1: CPU time, robust to a busy host)"
    )
    p.add_argument("--quanta", default="1,4,16", help="steps per group between switches (default 1,4,16)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each pattern (default 3)")
    args = p.parse_args(argv)
    run(args.steps, args.threads, [int(x) for x in args.quanta.split(",")], args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
