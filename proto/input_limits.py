"""Limits every entry point applies to what a client sends: JSON depth and size, quoted values.

Python's json module recurses: a document nested 100,000 levels deep raises RecursionError deep
inside the parser (and later in anything that walks it). Every place JSON enters (gRPC fields,
MQTT payloads, files) checks the nesting first, without recursion, and refuses with a message a
person can act on. Error messages quote what a client sent through `brief`, so a 100 KB id never
ends up in a gRPC status (metadata limits) or a log line.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_JSON_DEPTH = 64  # deeper than any schema, payload or document edgefleet defines
BRIEF_CHARS = 64

# a JSON string: runs of plain characters between escapes (one alternation per character was ~8 ms
# for a 175 KB upload piece; this form matches the same, ten times faster)
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonLimitError(ValueError):
    """The JSON text is too large, too deep or not JSON; the message names the limit."""


def brief(value: object, limit: int = BRIEF_CHARS) -> str:
    """`repr` of a client's value, cut to `limit` characters with the full length named."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}… ({size} characters)"


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text (0 for a scalar), without recursion."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    if not brackets:
        return 0
    return max(accumulate(_STEP[c] for c in brackets))


def loads_bounded(data: str | bytes, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from a client, refusing (JsonLimitError naming `what`) what is too big, too deep or not JSON."""
    if len(data) > max_bytes:
        raise JsonLimitError(f"{what} is {len(data)} bytes; at most {max_bytes} are accepted")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonLimitError(f"{what} is not valid UTF-8 (byte {e.start})") from e
    depth = json_depth(data)
    if depth > max_depth:
        raise JsonLimitError(f"{what} nests {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(data)
    except RecursionError as e:  # not reached after the depth check; kept as a last guard
        raise JsonLimitError(f"{what} nests too deeply") from e
    except ValueError as e:
        raise JsonLimitError(f"{what} is not valid JSON: {e}") from e
