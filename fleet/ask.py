"""`edgefleet ask`: one question to a node, the answer streamed to stdout, everything else on stderr.

stdout carries the answer only, so scripts can pipe it. On stderr: which node answered (the
`x-edgefleet-node` metadata a front door sets), while the node reads a long prompt how many
tokens it is reading and for how long (from `x-edgefleet-prompt-tokens`, sent once the request
is queued, until the first token), then the usage line and the sources.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

PROMPT_TOKENS_KEY = "x-edgefleet-prompt-tokens"
NODE_KEY = "x-edgefleet-node"
SHOW_AFTER_S = 0.3  # progress appears when the first token takes longer than this


class AskError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ask = sub.add_parser("ask", help="ask a node (or a node of --group) a question and stream the answer")
    ask.add_argument("question", nargs="?", default="", help="the question (not with --template)")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--json-schema", type=Path, help="file with a JSON schema the answer must follow")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ask.add_argument("--raw", action="store_true", help="send the question as a raw prompt, not a chat message")
    ask.add_argument("--adapter", default="", help="a LoRA adapter loaded on the node")
    ask.add_argument("--collection", default="", help="answer from this knowledge collection (shows the sources)")
    ask.add_argument("--template", default="", help="a prompt template pushed to the node (instead of a question)")
    ask.add_argument("--var", action="append", default=[], metavar="K=V", help="a template variable (repeatable)")


def _schema(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except OSError as e:
        raise AskError(f"cannot read JSON schema file {path}: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise AskError(f"{path} is not valid JSON: {e}") from e
    return text


def _variables(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise AskError(f"--var {pair!r} must look like NAME=VALUE")
        out[key] = value
    return out


def build_request(args: argparse.Namespace) -> pb.GenerateRequest:
    req = pb.GenerateRequest(json_schema=_schema(args.json_schema), stop=args.stop, adapter=args.adapter)
    if args.var and not args.template:
        raise AskError("--var needs --template")
    if args.template:
        if args.question or args.raw or args.system:
            raise AskError("--template takes its text from the template: leave out the question, --raw and --system")
        req.template = args.template
        req.variables.update(_variables(args.var))
    elif not args.question:
        raise AskError("ask needs a question (or --template NAME --var K=V …)")
    elif args.raw:
        req.prompt = args.question
    else:
        if args.system:
            req.messages.append(pb.ChatMessage(role="system", content=args.system))
        req.messages.append(pb.ChatMessage(role="user", content=args.question))
    if args.collection:
        req.retrieval.collection = args.collection
    for field in ("max_tokens", "temperature", "seed"):
        if getattr(args, field) is not None:
            setattr(req, field, getattr(args, field))
    return req


class PromptProgress:
    """`reading the prompt: N tokens, S s` on stderr until the first token (redrawn on a terminal)."""

    def __init__(self, err: TextIO, tokens: int, started: float) -> None:
        self.err, self.tokens, self.started = err, tokens, started
        self.tty = err.isatty()
        self._done = threading.Event()
        self._shown = False
        self._thread = threading.Thread(target=self._run, name="prompt-progress", daemon=True)

    def _line(self) -> str:
        return f"reading the prompt: {self.tokens} tokens, {time.monotonic() - self.started:.1f} s"

    def _run(self) -> None:
        if self._done.wait(SHOW_AFTER_S):  # a short prompt: the first token is there before it matters
            return
        self._shown = True
        self.err.write(self._line() + ("" if self.tty else "\n"))
        self.err.flush()
        while not self._done.wait(0.2 if self.tty else 2.0):
            self.err.write(f"\r{self._line()}\x1b[K" if self.tty else self._line() + "\n")
            self.err.flush()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._done.set()
        self._thread.join()
        if not self._shown:
            return
        elapsed = time.monotonic() - self.started
        end = f"\r{self._line()}\x1b[K\n" if self.tty else ""
        self.err.write(f"{end}first token after {elapsed:.1f} s\n")
        self.err.flush()


def _metadata(md: Any) -> dict[str, str]:
    return {k: v for k, v in (md or ()) if isinstance(v, str)}


def ask(stub: pb_grpc.InferenceStub, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    req = build_request(args)
    rid = uuid.uuid4().hex
    started = time.monotonic()
    call = stub.Generate(req, timeout=args.timeout, metadata=(("x-request-id", rid),))
    head = _metadata(call.initial_metadata())
    if head.get(NODE_KEY):
        err.write(f"answered by node {head[NODE_KEY]}\n")
    tokens = int(head[PROMPT_TOKENS_KEY]) if head.get(PROMPT_TOKENS_KEY, "").isdigit() else 0
    progress = PromptProgress(err, tokens, started)
    if tokens:
        progress.start()
    last = None
    try:
        for chunk in call:
            if last is None:
                progress.stop()
            out.write(chunk.text)
            out.flush()
            last = chunk
    finally:
        progress.stop()
    if not head.get(NODE_KEY):
        tail = _metadata(call.trailing_metadata())
        if tail.get(NODE_KEY):
            err.write(f"answered by node {tail[NODE_KEY]}\n")
    if last is None:
        raise AskError("the node closed the stream without an answer")
    out.write("\n")
    u = last.usage
    reason = pb.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower()
    err.write(
        f"[{reason}] prompt {u.prompt_tokens} tokens, completion {u.completion_tokens} tokens, "
        f"first token {u.time_to_first_token_ms:.0f} ms, {u.tokens_per_second:.1f} tokens/s, "
        f"total {u.total_ms:.0f} ms, request {rid}\n"
    )
    if last.source_chunk_ids:
        err.write(f"sources: {', '.join(last.source_chunk_ids)}\n")
    for c in last.citations:  # what the answer rests on (node/knowledge/grounding.py)
        err.write(f"cited [{c.n}]: {c.chunk_id}{f' (page {c.page})' if c.page else ''}\n")
    if last.abstained:
        err.write("abstained: the sources do not answer this question\n")
    elif last.unsupported:
        err.write("unsupported: the model's own words are not in its sources; the quote is what they say\n")
    if last.cached:
        err.write("(from the response cache)\n")
    return 0
