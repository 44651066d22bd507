"""Draftless speculation on grounded answers: the node's engine with and without, in this process.

RAG-style prompts (a context passage, a question whose answer copies from it) go to an in-process
Engine (smollm2-135m by default, greedy) with speculation off and on, at concurrency 1 (one request
at a time) and C (all at once, C slots). Prints tokens/s, the ratio on/off, the draft acceptance
rate and whether every greedy text is the same with and without.

    .venv/bin/python -m bench.speculation [--concurrency 1,8] [--max-tokens 96] [--repeats 2]

Measured with EDGEFLEET_THREADS compute threads (default 1); the figures that
matter are the ratios of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.node.engine.engine import Engine
from edgefleet.node.engine.engine_inbox import EngineConfig
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.speculation import SpeculationPolicy
from edgefleet.node.engine.types import Event, Failed, Finished, GenerationRequest, SamplingParams, TextDelta
from edgefleet.node.model_catalog import resolve_model

PASSAGES = (
    (
        "Pump P2 of the north filter line was serviced on 12 March. The technician replaced the mechanical "
        "seal, realigned the coupling to within 0.05 mm and set the discharge pressure alarm to 6.5 bar. "
        "The next inspection is due after 2000 running hours.",
        "What did the technician do on pump P2? Quote the service record.",
    ),
    (
        "Safety rule 14: before opening a chlorine dosing cabinet, stop the dosing pump, close valve V-301, "
        "wear a full-face respirator with a B2 filter, and make sure a second person stands outside the room.",
        "List every step of safety rule 14 exactly as written.",
    ),
    (
        "The cold store alarm log for 3 June reads: 02:14 door open for 6 minutes, temperature rose to -14.2 C; "
        "02:21 door closed; 02:48 temperature back to -18.0 C; no product was moved.",
        "Copy the alarm log entries for 3 June.",
    ),
    (
        "Compressor C1 datasheet: rated power 55 kW, free air delivery 9.8 cubic metres per minute at 7 bar, "
        "oil change every 4000 hours, air filter change every 2000 hours, sound level 68 dB(A).",
        "What are the service intervals of compressor C1? Answer with the datasheet's words.",
    ),
    (
        "Shift handover note: conveyor B3 trips on overload when the hopper is more than 80 percent full; "
        "keep the feed rate below 40 tonnes per hour until the motor is replaced on Friday.",
        "What does the shift handover note say about conveyor B3?",
    ),
    (
        "Boiler B-2 start-up procedure: open the main steam stop valve slowly, purge the furnace for five "
        "minutes, light the pilot burner, then raise the firing rate in steps of ten percent every two minutes.",
        "Repeat the start-up procedure of boiler B-2.",
    ),
    (
        "Warehouse policy: forklifts must not exceed 10 km/h inside the building, pallets heavier than "
        "1200 kg go on the ground floor only, and aisle 7 is closed for racking repairs until 30 September.",
        "What does the warehouse policy say? Quote it.",
    ),
    (
        "Chiller CH-4 fault history: 4 May low refrigerant pressure, leak found at the service valve and "
        "repaired; 19 May high condenser temperature, fan motor 2 replaced; 2 June no faults.",
        "Give the fault history of chiller CH-4 as recorded.",
    ),
)
THREADS = int(os.environ.get("EDGEFLEET_THREADS") or 1)  # compute threads; the machine is shared
SYSTEM = "Answer only from the context. Copy its words where you can."


def rag_tokens(model: LoadedModel, i: int) -> list[int]:
    passage, question = PASSAGES[i % len(PASSAGES)]
    text = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nContext:\n{passage}\n\n"
        f"Question: {question}<|im_end|>\n<|im_start|>assistant\n"
    )
    return model.tokenize(text, add_special=False, parse_special=True)


@dataclass
class Run:
    tokens: int
    seconds: float
    texts: dict[int, str]
    drafted: int
    accepted: int
    step_cost: float  # one more token in a step, in single-token steps, as the policy learned it
    cpu_seconds: float  # CPU time of this process: steadier than wall time on a shared machine
    steps: int  # decode steps

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_tps(self) -> float:
        return self.tokens / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


def engine_for(model: LoadedModel, slots: int, policy: SpeculationPolicy | None) -> Engine:
    cfg = EngineConfig(n_ctx_slot=1024, slots=slots, n_batch=512, queue_limit=64, threads=THREADS, adapt_threads=False)
    engine = Engine(model, cfg, speculation=policy)
    engine.start()
    return engine


def generate(engine: Engine, prompts: dict[int, list[int]], max_tokens: int) -> dict[int, tuple[str, int]]:
    """Submit every prompt at once; wait for all. Returns text and completion tokens per prompt."""
    out: dict[int, tuple[str, int]] = {}
    left = threading.Semaphore(0)
    for i, tokens in prompts.items():
        parts: list[str] = []

        def sink(ev: Event, i: int = i, parts: list[str] = parts) -> None:
            if isinstance(ev, TextDelta):
                parts.append(ev.text)
            elif isinstance(ev, Finished):
                out[i] = ("".join(parts) + ev.text_tail, ev.usage.completion_tokens)
                left.release()
            elif isinstance(ev, Failed):
                out[i] = (f"FAILED: {ev.error}", 0)
                left.release()

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_k=1)
        engine.submit(GenerationRequest(f"spec-{i}-{time.monotonic_ns()}", tokens, params, sink))
    for _ in prompts:
        if not left.acquire(timeout=600):
            raise TimeoutError("a generation did not finish in 600 s")
    return out


def run(model: LoadedModel, c: int, policy: SpeculationPolicy | None, max_tokens: int, n: int) -> Run:
    """n prompts, c at a time (each wave submitted together), on a fresh engine with c slots."""
    engine = engine_for(model, c, policy)
    try:
        generate(engine, {0: rag_tokens(model, 0)}, 8)  # warm-up: graphs, caches
        engine.drafted_tokens = engine.accepted_tokens = 0
        texts: dict[int, str] = {}
        tokens = 0
        steps = engine._decoder.steps if engine._decoder is not None else 0
        cpu = time.process_time()
        started = time.perf_counter()
        for wave in range(0, n, c):
            got = generate(engine, {i: rag_tokens(model, i) for i in range(wave, min(wave + c, n))}, max_tokens)
            for i, (text, k) in got.items():
                texts[i] = text
                tokens += k
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        steps = (engine._decoder.steps if engine._decoder is not None else 0) - steps
        cost = policy.costs.marginal() if policy is not None else 0.0
        return Run(tokens, seconds, texts, engine.drafted_tokens, engine.accepted_tokens, cost, cpu, steps)
    finally:
        engine.stop()


def fresh(policy: SpeculationPolicy) -> SpeculationPolicy:
    """The same settings with nothing learned yet (each run starts like a node does)."""
    return dataclasses.replace(policy)


def measure(
    concurrency: list[int], max_tokens: int, repeats: int, policy: SpeculationPolicy, model_name: str
) -> dict[str, Any]:
    """Figures per concurrency: tokens/s off and on (best of `repeats`), ratio, acceptance, same text."""
    with tempfile.TemporaryDirectory() as tmp:
        model = LoadedModel(resolve_model(model_name, Path(tmp)).path)
    results: dict[str, Any] = {"k": policy.k, "max_active": policy.max_active, "threads": THREADS}
    for c in concurrency:
        n = max(len(PASSAGES), c)
        best: dict[str, Run] = {}
        for _ in range(repeats):  # interleaved, so load on the machine hits both alike
            for name, pol in (("off", None), ("on", fresh(policy))):
                r = run(model, c, pol, max_tokens, n)
                if name not in best or r.tps > best[name].tps:
                    best[name] = r
        off, on = best["off"], best["on"]
        same = sum(1 for i in off.texts if off.texts[i] == on.texts.get(i))
        row = {
            "tokens_per_s_off": round(off.tps, 1),
            "tokens_per_s_on": round(on.tps, 1),
            "ratio": round(on.tps / off.tps, 3) if off.tps else 0.0,
            "ratio_cpu": round(on.cpu_tps / off.cpu_tps, 3) if off.cpu_tps else 0.0,
            "tokens_per_step_off": round(off.tokens / off.steps, 2) if off.steps else 0.0,
            "tokens_per_step_on": round(on.tokens / on.steps, 2) if on.steps else 0.0,
            "drafted": on.drafted,
            "accepted": on.accepted,
            "acceptance": round(on.accepted / on.drafted, 3) if on.drafted else 0.0,
            "same_text": f"{same}/{len(off.texts)}",
            "tokens": on.tokens,
            "step_cost_learned": round(on.step_cost, 3),
        }
        results[f"c{c}"] = row
        print(
            f"c={c}: off {row['tokens_per_s_off']} tok/s, on {row['tokens_per_s_on']} tok/s, "
            f"ratio {row['ratio']}x (CPU time {row['ratio_cpu']}x), tokens/step {row['tokens_per_step_off']} -> "
            f"{row['tokens_per_step_on']}, acceptance {row['acceptance']} ({on.accepted}/{on.drafted}), "
            f"greedy text identical {row['same_text']}, learned step cost {row['step_cost_learned']}",
            flush=True,
        )
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8", help="comma separated (default 1,8)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting, best kept (default 2)")
    ap.add_argument("--k", type=int, default=SpeculationPolicy.k, help="draft tokens per step")
    ap.add_argument("--max-active", type=int, default=SpeculationPolicy.max_active)
    ap.add_argument(
        "--step-cost", type=float, default=SpeculationPolicy.step_cost, help="prior cost of one more token in a step"
    )
    ap.add_argument("--fixed-cost", action="store_true", help="keep --step-cost, learn nothing from the steps")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    policy = SpeculationPolicy(
        k=args.k, max_active=args.max_active, step_cost=args.step_cost, learn_cost=not args.fixed_cost
    )
    conc = [int(x) for x in args.concurrency.split(",") if x.strip()]
    measure(conc, args.max_tokens, args.repeats, policy, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
