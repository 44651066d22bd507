"""From one MQTT sensor message to what a rule needs: its identity, template variables, answer topic.

Pure functions, no broker: the MQTT handler calls them and maps `MessageError` to an error result.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.input_limits import JsonLimitError, brief, loads_bounded
from edgefleet.proto.rules import PLACEHOLDER_RE, RuleSpec

MAX_ID_CHARS = 128
ID_PROPERTY = "msg-id"
# A payload is parsed for its `id` only up to this size (the largest any rule accepts).
MAX_ID_SCAN_BYTES = 256 * 1024
# A topic level (or a whole topic) used as a template variable: longer ones are refused, not prompted.
MAX_TOPIC_LEVEL_CHARS = 256
MAX_TOPIC_VARIABLE_CHARS = 1024

MessageErrorCode = Literal[
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.INVALID_UTF8,
    ErrorCode.INVALID_JSON,
    ErrorCode.MISSING_FIELD,
    ErrorCode.WRONG_TYPE,
    ErrorCode.BAD_TOPIC_LEVEL,
]
"""The codes of a message (not the node) at fault: a subset of ErrorCode."""


class MessageError(ValueError):
    """A message a rule cannot turn into variables; `code` is stable, the message is for people."""

    def __init__(self, code: MessageErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: MessageErrorCode = code
        self.message = message


def _usable_id(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    return value


def message_id(topic: str, payload: bytes, user_properties: list[tuple[str, str]]) -> str:
    """The message's application identity, used to answer it once however often it is delivered.

    Precedence, first usable wins:

    1. the MQTT 5 user property `msg-id` (its first occurrence);
    2. the `id` field of a JSON-object payload, a string or an integer (`5` and `"5"` are the same id);
    3. `sha256:<hex>` of the topic, a NUL byte and the payload: a re-sent identical message is a duplicate.

    A usable id has 1-128 characters and no control characters; an unusable one is skipped, not an
    error. Ids need only be unique per topic and rule: the ledger keys messages by (rule, topic, id).
    """
    for key, value in user_properties:
        if key == ID_PROPERTY:
            found = _usable_id(value)
            if found is not None:
                return found
            break
    if len(payload) <= MAX_ID_SCAN_BYTES and payload.lstrip()[:1] == b"{":
        try:
            data = loads_bounded(payload, "payload", MAX_ID_SCAN_BYTES)
        except (JsonLimitError, RecursionError):
            data = None
        if isinstance(data, dict):
            found = _usable_id(data.get("id"))
            if found is not None:
                return found
    digest = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
    return f"sha256:{digest}"


def _scalar_text(source: str, value: Any) -> str:
    if value is None:
        raise MessageError(ErrorCode.WRONG_TYPE, f"{source} is null")
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _walk(source: str, data: dict[str, Any]) -> str:
    value: Any = data
    path = "payload"
    for segment in source.split(".")[1:]:
        if isinstance(value, dict):
            if segment not in value:
                raise MessageError(ErrorCode.MISSING_FIELD, f"{path} has no field {segment!r}")
            value = value[segment]
        elif isinstance(value, list):
            if not segment.isdigit():
                raise MessageError(ErrorCode.WRONG_TYPE, f"{path} is an array; {segment!r} is not an index")
            if int(segment) >= len(value):
                raise MessageError(
                    ErrorCode.MISSING_FIELD, f"{path} has {len(value)} elements; there is no [{segment}]"
                )
            value = value[int(segment)]
        else:
            kind = "null" if value is None else type(value).__name__
            raise MessageError(ErrorCode.WRONG_TYPE, f"{path} is {kind}, not an object or array")
        path = f"{path}.{segment}"
    return _scalar_text(source, value)


def _topic_level(topic: str, index: int, source: str) -> str:
    levels = topic.split("/")
    if not -len(levels) <= index < len(levels):
        raise MessageError(ErrorCode.BAD_TOPIC_LEVEL, f"{source}: topic {brief(topic)} has {len(levels)} levels")
    return levels[index]


def _topic_variable(value: str, source: str, limit: int) -> str:
    """A topic (level) a client chose, as a template variable: bounded, no control characters."""
    if len(value) > limit:
        raise MessageError(
            ErrorCode.BAD_TOPIC_LEVEL, f"{source} is {len(value)} characters; at most {limit} are taken as a variable"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise MessageError(ErrorCode.BAD_TOPIC_LEVEL, f"{source} {brief(value)} contains control characters")
    return value


def extract_variables(rule: RuleSpec, topic: str, payload: bytes) -> dict[str, str]:
    """The rule's template variables from one message (see `RuleSpec` for the source language).

    The size limit always applies; UTF-8 and JSON are checked only when a source needs them, so a
    rule that reads only topic levels also takes binary payloads.
    """
    if len(payload) > rule.max_payload_bytes:
        raise MessageError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes; rule {rule.name} takes {rule.max_payload_bytes}",
        )
    text: str | None = None
    data: dict[str, Any] | None = None
    out: dict[str, str] = {}
    for name, source in rule.variables.items():
        if source == "topic":
            out[name] = _topic_variable(topic, source, MAX_TOPIC_VARIABLE_CHARS)
            continue
        if source.startswith("topic["):
            level = _topic_level(topic, int(source[6:-1]), source)
            out[name] = _topic_variable(level, source, MAX_TOPIC_LEVEL_CHARS)
            continue
        if text is None:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MessageError(ErrorCode.INVALID_UTF8, f"payload is not UTF-8: {e}") from e
        if source == "payload":
            out[name] = text
            continue
        if data is None:
            try:
                parsed = loads_bounded(text, "payload", rule.max_payload_bytes)
            except (JsonLimitError, RecursionError) as e:
                raise MessageError(ErrorCode.INVALID_JSON, f"{e} ({source} needs a JSON object)") from e
            if not isinstance(parsed, dict):
                raise MessageError(ErrorCode.INVALID_JSON, f"payload is not a JSON object ({source} needs one)")
            data = parsed
        out[name] = _walk(source, data)
    return out


def topic_safe(value: str) -> str:
    """`value` as it may stand inside one topic level, else `h-` and 32 hex digits of its SHA-256.

    Kept as is: 1-128 characters without `/`, `+`, `#`, NUL or control characters, not starting
    with `$`. Hashing (not replacing characters) keeps two different ids on two different topics.
    """
    if (
        1 <= len(value) <= MAX_ID_CHARS
        and not value.startswith("$")
        and not any(c in "/+#" or ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def output_topic(rule: RuleSpec, node_id: str, source_topic: str, source_id: str, fallback: str | None = None) -> str:
    """The topic of this message's answer: the rule's pattern filled in, or `fallback` without one.

    Raises `MessageError(ErrorCode.BAD_TOPIC_LEVEL)` when `{levelN}` names a level the topic does not have
    (possible only with a `#` filter; the rest is refused when the rule is pushed), and ValueError
    when the rule has no pattern and no fallback is given.
    """
    if rule.output_topic is None:
        if fallback is None:
            raise ValueError(f"rule {rule.name} has no output topic and no fallback was given")
        return fallback

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "rule":
            return topic_safe(rule.name)
        if name == "node":
            return topic_safe(node_id)
        if name == "source_id":
            return topic_safe(source_id)
        index = int(name[len("level") :])
        return topic_safe(_topic_level(source_topic, index, "{" + name + "}"))

    return PLACEHOLDER_RE.sub(fill, rule.output_topic)
