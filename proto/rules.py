"""Sensor rules: which MQTT messages a node answers, how, and where the answer goes.

A rule subscribes to an MQTT filter on the sensors' own (absolute) topics, turns each message
into template variables with a small source language, runs a prompt template and publishes a
`SensorResult`. Everything here is pure and shared by the orchestrator (validates at push time)
and the node (validates again before it applies a rule).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.proto.payload_base import _now, _Payload
from edgefleet.proto.topics import check_name
from edgefleet.proto.versions import Version

MAX_FILTER_CHARS = 256
MAX_OUTPUT_TOPIC_CHARS = 256
MAX_RULE_PAYLOAD_BYTES = 256 * 1024
DEFAULT_RULE_PAYLOAD_BYTES = 64 * 1024
MAX_VARIABLES = 32
MAX_SCHEMA_CHARS = 16 * 1024
MAX_PATH_DEPTH = 8

# `payload`, `payload.<seg>[.<seg>…]` (≤ MAX_PATH_DEPTH = 8 segments), `topic`, `topic[<i>]` (i may be negative).
SOURCE_RE = re.compile(r"^(?:payload(?:\.[A-Za-z0-9_-]{1,64}){0,8}|topic|topic\[-?[0-9]{1,3}\])$")
# `{rule}`, `{node}`, `{source_id}`, `{level<N>}`; any other brace is an error.
PLACEHOLDER_RE = re.compile(r"\{([a-z_]+[0-9]*)\}")
_LEVEL_RE = re.compile(r"^level([0-9]{1,3})$")


def check_topic_filter(flt: str) -> str:
    """Validate an MQTT subscription filter for a rule; return it unchanged or raise ValueError.

    Non-empty, at most 256 characters, no NUL, `+` only as a whole level, `#` only as the whole
    last level, and not starting with `$` (no `$SYS/…`, no `$share/…`: the node adds sharing).
    """
    if not flt:
        raise ValueError("topic filter is empty")
    if len(flt) > MAX_FILTER_CHARS:
        raise ValueError(f"topic filter is {len(flt)} characters; the limit is {MAX_FILTER_CHARS}")
    if "\0" in flt:
        raise ValueError("topic filter contains NUL")
    if flt.startswith("$"):
        raise ValueError(f"topic filter {flt!r} may not start with '$'")
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {flt!r}: '+' must be a whole level")
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {flt!r}: '#' must be the whole last level")
    return flt


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT matching: `+` is one level, `#` any number of trailing levels including none (so `a/#`
    matches `a`), and a topic starting with `$` is not matched by a filter starting with a wildcard.
    """
    if not topic or "+" in topic or "#" in topic:
        return False
    f_levels = flt.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def check_variables(v: dict[str, str]) -> dict[str, str]:
    """Template variables and their sources in a message (sensor rules, agent triggers); ValueError names a bad one."""
    if len(v) > MAX_VARIABLES:
        raise ValueError(f"{len(v)} variables; the limit is {MAX_VARIABLES}")
    for name, source in v.items():
        if not name.isidentifier():
            raise ValueError(f"variable {name!r} is not an identifier")
        if not SOURCE_RE.match(source):
            raise ValueError(
                f"variable {name}: source {source!r} is not one of payload, payload.<field>[.<field>…], "
                f"topic, topic[<i>]"
            )
    return v


def shared_filter(group: str, flt: str) -> str:
    """`$share/<group>/<filter>`: the broker hands each message to one subscriber of the group."""
    check_name("share group", group)
    return f"$share/{group}/{check_topic_filter(flt)}"


def fixed_levels(flt: str) -> int | None:
    """How many levels every topic matching `flt` has; None when it ends with `#`."""
    levels = flt.split("/")
    return None if levels[-1] == "#" else len(levels)


def output_placeholders(pattern: str) -> list[str]:
    """Placeholders of an output-topic pattern, in order; ValueError on any unknown or stray brace."""
    names = PLACEHOLDER_RE.findall(pattern)
    rest = PLACEHOLDER_RE.sub("", pattern)
    if "{" in rest or "}" in rest:
        raise ValueError(f"output topic {pattern!r} has a brace outside a {{placeholder}}")
    for name in names:
        if name not in ("rule", "node", "source_id") and not _LEVEL_RE.match(name):
            raise ValueError(
                f"output topic {pattern!r}: unknown placeholder {{{name}}}; use {{rule}}, {{node}}, "
                f"{{source_id}} or {{levelN}}"
            )
    return names


class RuleSpec(BaseModel):
    """One sensor rule.

    `variables` maps a template variable to its source in the message:

    - `payload`: the whole payload as UTF-8 text;
    - `payload.<a>.<b>`: a field of a JSON-object payload (up to 8 segments of letters, digits,
      `_`, `-`; a segment of digits indexes an array). Strings are taken as they are, numbers and
      booleans as JSON text (`3.5`, `true`), objects and arrays as compact JSON; null is an error;
    - `topic`: the whole topic the message came on;
    - `topic[i]`: level `i` of that topic, 0-based; negative counts from the end.

    `output_topic` is an absolute topic with placeholders `{rule}`, `{node}`, `{source_id}` and
    `{levelN}` (level N of the source topic); None means the node's `results/<node>` topic.
    Substituted values that could change the topic's shape are replaced by a hash.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    version: Version
    topic_filter: str
    template: str
    variables: dict[str, str] = Field(default_factory=dict)
    max_tokens: Annotated[int, Field(ge=1, le=1024)] = 64
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    adapter: str | None = None
    json_schema: dict[str, Any] | None = None
    output_topic: str | None = None
    collection: str | None = None
    top_k: Annotated[int, Field(ge=1, le=32)] | None = None
    max_payload_bytes: Annotated[int, Field(ge=1, le=MAX_RULE_PAYLOAD_BYTES)] = DEFAULT_RULE_PAYLOAD_BYTES
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("rule", v)

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_name("template", v)

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str | None) -> str | None:
        return None if v is None else check_name("adapter", v)

    @field_validator("collection")
    @classmethod
    def _collection(cls, v: str | None) -> str | None:
        return None if v is None else check_name("collection", v)

    @field_validator("topic_filter")
    @classmethod
    def _filter(cls, v: str) -> str:
        return check_topic_filter(v)

    @field_validator("variables")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        return check_variables(v)

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if len(json.dumps(v)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"json_schema is over {MAX_SCHEMA_CHARS} characters")
        try:
            validator_for(v).check_schema(v)
        except SchemaError as e:
            raise ValueError(f"json_schema is not a valid JSON schema: {e.message}") from e
        return v

    @field_validator("output_topic")
    @classmethod
    def _output(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or len(v) > MAX_OUTPUT_TOPIC_CHARS:
            raise ValueError(f"output topic must be 1-{MAX_OUTPUT_TOPIC_CHARS} characters")
        if "\0" in v or "+" in v or "#" in v:
            raise ValueError(f"output topic {v!r} may not contain wildcards or NUL")
        if v.startswith("$"):
            raise ValueError(f"output topic {v!r} may not start with '$'")
        output_placeholders(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RuleSpec:
        if self.top_k is not None and self.collection is None:
            raise ValueError("top_k needs a collection")
        levels = fixed_levels(self.topic_filter)
        if levels is None:
            return self
        for name, source in self.variables.items():
            if source.startswith("topic["):
                i = int(source[6:-1])
                if not -levels <= i < levels:
                    raise ValueError(
                        f"variable {name}: {source} is out of range; topics matching {self.topic_filter!r} "
                        f"have {levels} levels"
                    )
        for placeholder in output_placeholders(self.output_topic or ""):
            m = _LEVEL_RE.match(placeholder)
            if m and int(m.group(1)) >= levels:
                raise ValueError(
                    f"output topic: {{{placeholder}}} is out of range; topics matching {self.topic_filter!r} "
                    f"have {levels} levels"
                )
        return self

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class SensorResult(_Payload):
    """The answer (or the reason there is none) to one sensor message, published once per message."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    rule: str
    rule_version: str
    source_topic: str
    source_id: str
    node_id: str
    model: str = ""
    adapter: str = ""  # name@version, "" for the base model
    template: str = ""  # name@version
    ok: bool
    answer_text: str = ""
    answer_json: Any | None = None
    error_code: str = ""
    error: str = ""
    queue_ms: float = 0.0
    ttft_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # A rule with a `collection`: the chunks the prompt was given, the sources the answer cites
    # ({n, chunk_id, document_id, page, quote}) and whether it says the documents do not cover the question.
    sources: list[str] = Field(default_factory=list)
    citations: list[dict[str, Any]] = Field(default_factory=list)
    abstained: bool = False
    ts: float = Field(default_factory=_now)
