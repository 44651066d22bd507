"""Streaming clients, one per connection, and the closed loop that runs N of them at a level.

The node speaks gRPC (Inference.Generate); llama_cpp.server and llama-server speak HTTP with
server-sent events.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.cpu_load import CpuAccount
from bench.prompts import Prompt
from bench.records import RequestRecord
from bench.settings import REPEAT_PENALTY, REQUEST_TIMEOUT_S, SEED, TEMPERATURE, TOP_K, TOP_P


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
    def __init__(self, channel: Any) -> None:
        """`channel`: a grpc.Channel of its own (mutual TLS, or plaintext with --insecure)."""
        import grpc

        from edgefleet.proto.v1 import inference_pb2 as pb
        from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

        self.pb = pb
        self.channel = channel
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.stub = pb_grpc.InferenceStub(self.channel)

    def generate(self, prompt: Prompt, max_tokens: int, t0: float, client: int, rnd: int) -> RequestRecord:
        pb = self.pb
        req = pb.GenerateRequest(
            messages=[pb.ChatMessage(role="user", content=prompt.user)],
            max_tokens=max_tokens,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            top_k=TOP_K,
            seed=SEED,
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
            client,
            rnd,
            int(u.prompt_tokens),
            int(u.completion_tokens),
            finish,
            t_send - t0,
            (t_first or t_end) - t0,
            t_end - t0,
            server_ttft_ms=round(u.time_to_first_token_ms, 1),
            expected_prompt_tokens=prompt.n_tokens,
        )

    def close(self) -> None:
        self.channel.close()


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


# The sampling settings every HTTP backend gets, the same as the node's request.
SAMPLING: dict[str, Any] = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "top_k": TOP_K,
    "seed": SEED,
    "repeat_penalty": REPEAT_PENALTY,
    "stream": True,
}


class OpenAICompletionsClient(Client):
    """llama_cpp.server: POST /v1/completions with stream=true (no usage in the stream)."""

    def __init__(self, base: str, counter: Callable[[str], int]) -> None:
        import httpx

        self.http = httpx.Client(base_url=base, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0))
        self.count_tokens = counter

    def generate(self, prompt: Prompt, max_tokens: int, t0: float, client: int, rnd: int) -> RequestRecord:
        body = {
            "prompt": prompt.rendered,
            "max_tokens": max_tokens,
            **SAMPLING,
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
        return RequestRecord(
            client,
            rnd,
            prompt.n_tokens,
            n,
            finish or "?",
            t_send - t0,
            (t_first or t_end) - t0,
            t_end - t0,
            tokens_exact=exact,
            retries=retries,
            expected_prompt_tokens=prompt.n_tokens,
        )

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
            "prompt": prompt.rendered,
            "n_predict": max_tokens,
            **SAMPLING,
            "ignore_eos": self.ignore_eos,
            "cache_prompt": True,
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
        return RequestRecord(
            client,
            rnd,
            prompt_n,
            n,
            finish,
            t_send - t0,
            (t_first or t_end) - t0,
            t_end - t0,
            server_ttft_ms=timings.get("prompt_ms"),
            retries=retries,
            expected_prompt_tokens=prompt.n_tokens,
        )

    def close(self) -> None:
        self.http.close()
