"""The raw batched-decode ceiling: llama_decode over a batch of N sequences, greedy, nothing else.

The fifth backend of run_bench.py (`raw`). A worker process (run_bench.py --worker raw) holds one
llama.cpp context configured like the node's (SLOTS sequences x N_CTX_SLOT tokens, separate KV
streams, n_batch = n_ubatch = N_BATCH, THREADS threads, flash attention as --flash-attn) and runs
the level's N closed-loop clients as N sequences of one continuous batch:

- every step is one llama_decode of one batch: the last token of each generating sequence, plus
  the whole prompt of each client whose next request starts (as many as fit N_BATCH tokens; the
  others wait a step), logits only where a token is sampled;
- sampling is an argmax over each output row of llama_get_logits (greedy, temperature 0);
- a request ends at exactly max_tokens (EOS ignored, as llama-server's ignore_eos); its sequence's
  KV cells are removed and the client's next prompt joins the next batch.

No detokenizing, no stop strings, no per-token messages, no threads: what the same llama.cpp does
at most for this load on this machine, the denominator of `node / raw batched` in the summary.
Timings as the other backends record them: request sent (the level start, or the end of the
client's previous request) -> first token sampled -> last token sampled.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench.inprocess import InProcessBackend
from bench.settings import GPU_LAYERS, N_BATCH, N_CTX_SLOT, SLOTS, THREADS


class RawBatchedBackend(InProcessBackend):
    name = "raw"
    worker = "raw"
    note = (
        "llama_decode over one batch of the level's N sequences, argmax sampling, nothing else; "
        "prompts join the batch when their client's previous request ends (continuous batching)"
    )


class _Seq:
    """One client: its sequence id, the request it is on and where that request stands."""

    def __init__(self, client: int, prompts: list[list[int]], expected: list[int]) -> None:
        self.client = client
        self.prompts = prompts
        self.expected = expected
        self.round = 0
        self.pos = 0
        self.n_gen = 0
        self.last = -1
        self.prefilled = False
        self.t_send = 0.0
        self.t_first = 0.0


def worker_raw() -> int:
    """--worker raw: the same line protocol as the in-process worker (bench/inprocess.py)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything llama.cpp prints goes to the log, not into the protocol
    import llama_cpp
    import numpy as np

    cfg = json.loads(sys.stdin.readline())
    max_tokens = int(cfg["max_tokens"])
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = GPU_LAYERS
    model = llama_cpp.llama_model_load_from_file(cfg["model"].encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {cfg['model']}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    bos = int(llama_cpp.llama_vocab_bos(vocab))
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = SLOTS * N_CTX_SLOT
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_seq_max = SLOTS
    params.n_threads = params.n_threads_batch = THREADS
    params.kv_unified = False  # as the node: one KV stream per sequence
    params.no_perf = True
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg["flash_attn"] else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        raise SystemExit("llama.cpp could not create the context")
    mem = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def tokenize(text: str) -> list[int]:
        raw = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(raw) + 8))()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, True)
        if n < 0:
            raise RuntimeError(f"tokenize: {n}")
        toks = list(buf[:n])
        if len(toks) > 1 and toks[0] == toks[1] == bos:
            toks = toks[1:]  # as the node: the template wrote BOS itself
        return toks

    def run_level(plan: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        seqs = [
            _Seq(c, [tokenize(p["rendered"]) for p in row], [int(p["n_tokens"]) for p in row])
            for c, row in enumerate(plan)
        ]
        if len(seqs) > SLOTS:
            raise RuntimeError(f"{len(seqs)} clients, {SLOTS} sequences")
        for s in seqs:
            if len(s.prompts[0]) > N_BATCH or max(len(p) for p in s.prompts) + max_tokens > N_CTX_SLOT:
                raise RuntimeError("a prompt does not fit one batch or its sequence")
            llama_cpp.llama_memory_seq_rm(mem, s.client, -1, -1)
        records: list[dict[str, Any]] = []
        active = list(seqs)
        t0 = time.perf_counter()
        while active:
            n = 0
            rows: list[_Seq] = []
            for s in active:  # generating sequences first: one token each
                if s.prefilled:
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = s.last, s.pos, 1
                    batch.seq_id[n][0], batch.logits[n] = s.client, True
                    n += 1
                    rows.append(s)
            for s in active:  # then whole prompts, while they fit
                if s.prefilled:
                    continue
                toks = s.prompts[s.round]
                if n + len(toks) > N_BATCH:
                    continue
                for i, t in enumerate(toks):
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = t, i, 1
                    batch.seq_id[n][0], batch.logits[n] = s.client, i == len(toks) - 1
                    n += 1
                s.pos, s.prefilled = len(toks), True
                rows.append(s)
            batch.n_tokens = n
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} on {n} tokens")
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(len(rows), n_vocab))
            picks = logits.argmax(axis=1).tolist()
            now = time.perf_counter()
            for s, tok in zip(rows, picks, strict=True):
                s.n_gen += 1
                if s.n_gen == 1:
                    s.t_first = now
                else:
                    s.pos += 1  # the token fed this step now has its cell
                s.last = tok
                if s.n_gen < max_tokens:
                    continue
                records.append(
                    {
                        "client": s.client,
                        "round": s.round,
                        "prompt_tokens": len(s.prompts[s.round]),
                        "completion_tokens": s.n_gen,
                        "finish": "length",
                        "t_send": s.t_send - t0 if s.t_send else 0.0,
                        "t_first": s.t_first - t0,
                        "t_end": now - t0,
                        "tokens_exact": True,
                        "expected_prompt_tokens": s.expected[s.round],
                    }
                )
                llama_cpp.llama_memory_seq_rm(mem, s.client, -1, -1)
                s.round, s.n_gen, s.prefilled, s.t_send = s.round + 1, 0, False, now
                if s.round == len(s.prompts):
                    active.remove(s)
        return records

    out.write(json.dumps({"ready": True}) + "\n")
    try:
        for line in sys.stdin:
            if line.strip():
                out.write(json.dumps({"records": run_level(json.loads(line)["plan"])}) + "\n")
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return 0
