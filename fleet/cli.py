"""`edgefleet`: the operator's command line. A gRPC client like any other."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from edgefleet.fleet import site_commands
from edgefleet.fleet.control import OrchestratorUnreachable
from edgefleet.fleet.settings import FleetSettings
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc


class CliError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def _parser(settings: FleetSettings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet", description="Operate an edgefleet site")
    p.add_argument("--node", default=settings.node, help=f"node address (default {settings.node}, EDGEFLEET_NODE)")
    p.add_argument("--timeout", type=float, default=settings.timeout_s, help="deadline in seconds")
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ask a node a question and stream the answer")
    ask.add_argument("question")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--json-schema", type=Path, help="file with a JSON schema the answer must follow")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ask.add_argument("--raw", action="store_true", help="send the question as a raw prompt, not a chat message")
    ask.add_argument("--adapter", default="", help="a LoRA adapter loaded on the node")
    ask.add_argument("--collection", default="", help="answer from this knowledge collection (shows the sources)")
    info = sub.add_parser("node-info", help="show what a node runs and how busy it is")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    site_commands.add_parser(sub)
    return p


def _schema(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except OSError as e:
        raise CliError(f"cannot read JSON schema file {path}: {e.strerror}") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise CliError(f"{path} is not valid JSON: {e}") from e
    return text


def _ask(stub: pb_grpc.InferenceStub, args: argparse.Namespace, out: TextIO) -> int:
    req = pb.GenerateRequest(json_schema=_schema(args.json_schema), stop=args.stop, adapter=args.adapter)
    if args.collection:
        req.retrieval.collection = args.collection
    if args.raw:
        req.prompt = args.question
    else:
        if args.system:
            req.messages.append(pb.ChatMessage(role="system", content=args.system))
        req.messages.append(pb.ChatMessage(role="user", content=args.question))
    for field in ("max_tokens", "temperature", "seed"):
        if getattr(args, field) is not None:
            setattr(req, field, getattr(args, field))
    rid = uuid.uuid4().hex
    last = None
    for chunk in stub.Generate(req, timeout=args.timeout, metadata=(("x-request-id", rid),)):
        out.write(chunk.text)
        out.flush()
        last = chunk
    if last is None:
        raise CliError("the node closed the stream without an answer")
    u = last.usage
    reason = pb.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower()
    out.write(
        f"\n[{reason}] prompt {u.prompt_tokens} tokens, completion {u.completion_tokens} tokens, "
        f"first token {u.time_to_first_token_ms:.0f} ms, {u.tokens_per_second:.1f} tokens/s, "
        f"total {u.total_ms:.0f} ms, request {rid}\n"
    )
    if last.source_chunk_ids:
        out.write(f"sources: {', '.join(last.source_chunk_ids)}\n")
    if last.cached:
        out.write("(from the response cache)\n")
    return 0


def _node_info(stub: pb_grpc.InferenceStub, args: argparse.Namespace, out: TextIO) -> int:
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=args.timeout)
    if args.json:
        out.write(json.dumps(MessageToDict(info, preserving_proto_field_name=True), indent=2) + "\n")
        return 0
    m = info.model
    th = info.thermal
    rows = [
        ("node", info.node_id),
        ("status", info.status),
        ("profile", info.profile),
        ("model", f"{m.name} ({m.architecture}, {m.quantization}, {m.file_size_bytes / 2**20:.1f} MiB)"),
        ("sha256", m.sha256),
        ("context", f"{info.n_ctx} tokens per slot"),
        ("slots", f"{info.slots_busy} busy / {info.slots_available} usable / {info.slots_total} total"),
        ("queue", f"{info.queue_depth} / {info.queue_limit}"),
        (
            "memory",
            f"RSS {info.rss_bytes / 2**20:.0f} MiB, estimate {info.memory_estimate_bytes / 2**20:.0f} MiB, "
            f"budget {info.memory_budget_bytes / 2**20:.0f} MiB",
        ),
        (
            "thermal",
            f"{th.temperature_c:.1f} C{' throttled' if th.throttled else ''}{' shedding' if th.shedding else ''}"
            if th.available
            else "no thermal zone",
        ),
        ("adapters", ", ".join(f"{a.name}@{a.version}" for a in info.adapters) or "none"),
        ("knowledge", f"{info.search_backend or 'off'} search, embedder {info.embedder or '-'}"),
        (
            "versions",
            ", ".join(f"{k} {v}" for k, v in MessageToDict(info.versions, preserving_proto_field_name=True).items()),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        out.write(f"{k:<{width}}  {v}\n")
    return 0


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    settings = FleetSettings()
    args = _parser(settings).parse_args(argv)
    if args.command == "fleet":
        try:
            return site_commands.run(args, settings, out)
        except (site_commands.FleetCommandError, OrchestratorUnreachable, ValueError) as e:
            sys.stderr.write(f"edgefleet: {e}\n")
            return 2
    channel = grpc.insecure_channel(args.node)
    stub = pb_grpc.InferenceStub(channel)
    try:
        if args.command == "ask":
            return _ask(stub, args, out)
        return _node_info(stub, args, out)
    except CliError as e:
        sys.stderr.write(f"edgefleet: {e}\n")
        return 2
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (e.details() or "").lower():
            sys.stderr.write(f"edgefleet: cannot reach a node at {args.node}: is edgefleet-node running there?\n")
        else:
            sys.stderr.write(f"edgefleet: {code.name}: {e.details()}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
