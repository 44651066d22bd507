"""OpenAI request bodies → edgefleet requests, every field checked; a wrong one is named.

Supported: model (`<model>` or `<model>:<adapter>`), messages / prompt, max_tokens or
max_completion_tokens, temperature, top_p, seed, stop (a string or a list), n (1 only), stream,
stream_options.include_usage, response_format (text, json_object, json_schema), user (ignored);
on chat: tools, tool_choice, parallel_tool_calls, assistant `tool_calls` and `tool` messages
(openai_tools.py). Edgefleet extras (the `extra_body` of the official client): template + variables,
collection + top_k, adapter, tools_unconstrained (evaluation only). Any other field is refused with
a 400 naming it: nothing is silently ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from edgefleet.orchestrator.front_door import openai_tools as tools
from edgefleet.proto.v1 import inference_pb2 as pb

MAX_STOP = 4
ROLES = {"system", "user", "assistant", "tool", "developer"}
_COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "user",
    "template",
    "variables",
    "collection",
    "top_k",
    "adapter",
}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "response_format"} | tools.TOOL_FIELDS
COMPLETION_FIELDS = _COMMON | {"prompt", "response_format"}
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "user"}
MESSAGE_KEYS = {  # by role ("": any other)
    "": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls"} | tools.EMPTY_ASSISTANT_KEYS,
    "tool": {"role", "content", "name", "tool_call_id"},
}
JSON_OBJECT_SCHEMA = {"type": "object"}


class BodyError(Exception):
    """A request body field that is wrong: HTTP 400 naming `param`."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


@dataclass
class CompletionCall:
    chat: bool
    model: str
    adapter: str
    request: pb.GenerateRequest
    stream: bool = False
    include_usage: bool = False
    messages: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class EmbeddingCall:
    model: str
    texts: list[str]
    base64: bool = False  # float32 little-endian, base64: what the official client asks for


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BodyError(None, "the request body must be a JSON object")
    _check_text(body)
    return body


def _check_text(body: dict[str, Any]) -> None:
    """Refuse a string that is not valid Unicode (a lone surrogate, `"\\ud800"` in JSON), naming where."""
    todo: list[tuple[Any, str | None]] = [(body, None)]
    while todo:
        v, where = todo.pop()
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, item in items:
            path = f"{where}[{k}]" if isinstance(k, int) else str(k) if where is None else f"{where}.{k}"
            for text in (k, item):
                if isinstance(text, str):
                    try:
                        text.encode()
                    except UnicodeEncodeError:
                        raise BodyError(
                            path.encode(errors="replace").decode(), f"{path!a} is not valid Unicode"
                        ) from None
            todo.append((item, path))


def _unsupported(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise BodyError(key, f"{key!r} is not supported by edgefleet (supported: {', '.join(sorted(allowed))})")


def _str(body: dict[str, Any], key: str, required: bool = False) -> str:
    v = body.get(key)
    if v is None:
        if required:
            raise BodyError(key, f"{key!r} is required")
        return ""
    if not isinstance(v, str):
        raise BodyError(key, f"{key!r} must be a string")
    if required and not v.strip():
        raise BodyError(key, f"{key!r} must not be empty")
    return v


def _int(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BodyError(key, f"{key!r} must be an integer")
    if not lo <= v <= hi:
        raise BodyError(key, f"{key!r} must be between {lo} and {hi}, not {v}")
    return v


def _number(body: dict[str, Any], key: str, lo: float, hi: float, low_open: bool = False) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BodyError(key, f"{key!r} must be a (finite) number")
    if v > hi or v < lo or (low_open and v == lo):
        span = f"({lo}, {hi}]" if low_open else f"[{lo}, {hi}]"
        raise BodyError(key, f"{key!r} must be in {span}, not {v}")
    return float(v)


def _bool(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BodyError(key, f"{key!r} must be true or false")
    return v


def split_model(body: dict[str, Any]) -> tuple[str, str]:
    """(model, adapter) from `model` (`<model>:<adapter>`) and the `adapter` extra."""
    model = _str(body, "model", required=True).strip()
    adapter = _str(body, "adapter").strip()
    name, sep, suffix = model.partition(":")
    if sep:
        if not name or not suffix:
            raise BodyError("model", f"model {model!r} must be <model> or <model>:<adapter>")
        if adapter and adapter != suffix:
            raise BodyError("adapter", f"adapter {adapter!r} differs from the one in model {model!r}")
        adapter = suffix
    return name, adapter


def _stop(body: dict[str, Any]) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BodyError("stop", "'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP:
        raise BodyError("stop", f"'stop' takes at most {MAX_STOP} strings, not {len(stops)}")
    return stops


def _response_format(body: dict[str, Any]) -> str:
    """The JSON schema text the output is held to; '' for free text."""
    v = body.get("response_format")
    if v is None:
        return ""
    if not isinstance(v, dict) or not isinstance(v.get("type"), str):
        raise BodyError("response_format", "'response_format' must be an object with a 'type'")
    kind = v["type"]
    if kind == "text":
        return ""
    if kind == "json_object":
        return json.dumps(JSON_OBJECT_SCHEMA)
    if kind != "json_schema":
        raise BodyError(
            "response_format.type", f"response_format type {kind!r} is not text, json_object or json_schema"
        )
    spec = v.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise BodyError("response_format.json_schema.schema", "'response_format.json_schema.schema' must be an object")
    try:
        return json.dumps(spec["schema"], allow_nan=False)
    except (ValueError, RecursionError) as e:
        raise BodyError("response_format.json_schema.schema", f"the schema cannot be used: {e}") from None


def _messages(body: dict[str, Any]) -> list[pb.ChatMessage]:
    v = body.get("messages")
    if v is None:
        return []
    if not isinstance(v, list):
        raise BodyError("messages", "'messages' must be a list")
    out = []
    calls: dict[str, str] = {}  # the assistant messages' call ids → names, for the tool messages
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BodyError(where, f"{where} must be an object with role and content")
        role = m.get("role")
        if role == "function":
            raise BodyError(f"{where}.role", f"{where}.role 'function' is deprecated: send a 'tool' message")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable
            raise BodyError(f"{where}.role", f"{where}.role must be one of {', '.join(sorted(ROLES))}")
        allowed = MESSAGE_KEYS.get(role, MESSAGE_KEYS[""])
        for key in m:
            if key not in allowed:
                raise BodyError(f"{where}.{key}", f"{where}.{key} is not supported by edgefleet on a {role} message")
        msg = pb.ChatMessage(role="system" if role == "developer" else role)
        if role == "assistant":
            msg.tool_calls.extend(tools.assistant_calls(m, where, calls))
        if role == "tool":
            msg.tool_call_id, msg.name = tools.tool_reply(m, where, calls)
        elif m.get("name") is not None:
            if not isinstance(m["name"], str):
                raise BodyError(f"{where}.name", f"{where}.name must be a string")
            msg.name = m["name"]
        if not (msg.tool_calls and m.get("content") is None):  # an assistant's calls: content may be null
            msg.content = _content(m.get("content"), f"{where}.content")
        out.append(msg)
    return out


def _content(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # content parts: text only
        texts = []
        for j, part in enumerate(v):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BodyError(f"{where}[{j}]", f"{where}[{j}] must be a text part (images and audio: not supported)")
            texts.append(part["text"])
        return "".join(texts)
    raise BodyError(where, f"{where} must be a string or a list of text parts")


def _variables(body: dict[str, Any]) -> dict[str, str]:
    v = body.get("variables")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BodyError("variables", "'variables' must be an object of names to strings")
    out = {}
    for k, value in v.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BodyError(f"variables.{k}", f"variables.{k} must be a string or a number")
        out[k] = str(value)
    return out


def _generate_common(body: dict[str, Any], req: pb.GenerateRequest) -> None:
    n = _int(body, "n", 1, 1 << 30)
    if n is not None and n != 1:
        raise BodyError("n", "'n' must be 1: edgefleet generates one choice per request")
    max_tokens = _int(body, "max_completion_tokens", 1, 1 << 20)
    plain = _int(body, "max_tokens", 1, 1 << 20)
    if max_tokens is not None and plain is not None and max_tokens != plain:
        raise BodyError("max_tokens", "'max_tokens' and 'max_completion_tokens' differ; give one")
    max_tokens = max_tokens if max_tokens is not None else plain
    if max_tokens is not None:
        req.max_tokens = max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    if temperature is not None:
        req.temperature = temperature
    top_p = _number(body, "top_p", 0.0, 1.0, low_open=True)
    if top_p is not None:
        req.top_p = top_p
    seed = _int(body, "seed", 0, 2**32 - 1)
    if seed is not None:
        req.seed = seed
    req.stop.extend(_stop(body))
    req.json_schema = _response_format(body)
    template = _str(body, "template").strip()
    variables = _variables(body)
    if variables and not template:
        raise BodyError("variables", "'variables' needs a 'template'")
    req.template = template
    req.variables.update(variables)
    collection = _str(body, "collection").strip()
    top_k = _int(body, "top_k", 1, 50)
    if top_k is not None and not collection:
        raise BodyError("top_k", "'top_k' needs a 'collection'")
    if collection:
        req.retrieval.collection = collection
        req.retrieval.top_k = top_k or 0


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is None:
        return stream, False
    if not stream:
        raise BodyError("stream_options", "'stream_options' is only allowed with 'stream': true")
    if not isinstance(opts, dict) or any(k != "include_usage" for k in opts):
        raise BodyError("stream_options", "'stream_options' takes only include_usage")
    return stream, _bool(opts, "include_usage")


def parse_chat(raw: Any) -> CompletionCall:
    body = _object(raw)
    try:
        tools.refuse_legacy(body)
        _unsupported(body, CHAT_FIELDS)
        model, adapter = split_model(body)
        req = pb.GenerateRequest(adapter=adapter)
        messages = _messages(body)
        _generate_common(body, req)
        tools.parse_tools(body, req)
    except tools.ToolError as e:
        raise BodyError(e.param, e.message) from None
    if req.template and messages:
        raise BodyError("messages", "give 'messages' or a 'template', not both")
    if not req.template and not messages:
        raise BodyError("messages", "'messages' must not be empty (or give a 'template')")
    req.messages.extend(messages)
    stream, usage = _stream(body)
    return CompletionCall(True, model, adapter, req, stream, usage, [(m.role, m.content) for m in messages])


def parse_completion(raw: Any) -> CompletionCall:
    body = _object(raw)
    try:
        tools.refuse_on_completions(body)
    except tools.ToolError as e:
        raise BodyError(e.param, e.message) from None
    _unsupported(body, COMPLETION_FIELDS)
    model, adapter = split_model(body)
    req = pb.GenerateRequest(adapter=adapter)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if prompt is not None and not isinstance(prompt, str):
        raise BodyError("prompt", "'prompt' must be a string (a list of prompts: one request each)")
    _generate_common(body, req)
    if req.template and prompt:
        raise BodyError("prompt", "give a 'prompt' or a 'template', not both")
    if not req.template and not prompt:
        raise BodyError("prompt", "'prompt' must not be empty (or give a 'template')")
    req.prompt = prompt or ""
    stream, usage = _stream(body)
    return CompletionCall(False, model, adapter, req, stream, usage)


def parse_embeddings(raw: Any) -> EmbeddingCall:
    body = _object(raw)
    _unsupported(body, EMBEDDING_FIELDS)
    model = _str(body, "model", required=True).strip()
    fmt = _str(body, "encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BodyError("encoding_format", "'encoding_format' must be float or base64")
    v = body.get("input")
    texts = [v] if isinstance(v, str) else v
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise BodyError("input", "'input' must be a non-empty string or a non-empty list of them (no token arrays)")
    return EmbeddingCall(model, texts, fmt == "base64")
