"""Evaluation sets: the questions a release must still answer well, and how answers are scored.

An evaluation set is a JSON or YAML file (`load_evaluation_set`) attached to a release
(proto/rollouts.py); the orchestrator sends every case through its front door pinned to each node of
a wave, before the change (the baseline) and after it, greedy, and compares the figures.

File format (YAML shown; JSON is the same object)::

    name: maintenance            # optional, for messages
    cases:                       # 1 to 50 cases
      - id: triage-pump          # unique in the set: 1-64 letters, digits, '.', '_' or '-'
        template: triage         # a prompt template the nodes hold (pushed with push-template) ...
        variables: {sensor: pump-3, reading: "vibration 7.1 mm/s RMS"}
        contains: [pump]         # checks: each one passes or fails (see below)
      - id: hello
        prompt: Say hello to the technician.   # ... or a prompt: one user message
        system: Answer in one sentence.        # optional system prompt (prompt cases only)
        max_tokens: 24                         # 1-512, default 48
        pattern: "(?i)hello|hi"
      - id: status-json
        prompt: Is pump 3 running? Answer in JSON.
        json_schema: {type: object, properties: {running: {type: boolean}}, required: [running]}
      - id: manual
        prompt: How often is the pump 3 filter changed?
        collection: manuals      # answer from this knowledge collection (RAG)
        source: pump-3.md        # its retrieved sources must include this document id
      - id: ticket
        prompt: Pump 3 is leaking, open a ticket.
        tools: [{type: function, function: {name: open_ticket, parameters: {type: object}}}]
        tool_choice: required    # auto (default) or required
        tool: open_ticket        # the answer must call this tool

Checks (all optional; every one given is scored pass or fail):

- `contains`: every string appears in the answer (case-insensitive);
- `pattern`: a Python regular expression found in the answer (`re.search`; `(?i)` for any case);
- `json_schema`: the answer is JSON valid against it; with `constrained: true` (the default) the
  schema is also sent with the request, so the node constrains the answer with a grammar as a
  sensor rule does (an answer cut by `max_tokens` then fails); a failure counts in `schema_failures`;
- `tool` (needs `tools`, OpenAI function definitions): the answer calls that tool;
- `source` (needs `collection`): a chunk of that document id is among the answer's sources.

A case with no check is scored by one implicit check, `answered`: the node answered at all. A case
the node fails (an error, a refusal, the per-case timeout) fails every one of its checks and counts
in `errors`. `Figures` aggregate a node's case scores: `score` = passed checks / checks (0..1),
`p95_ms` (end-to-end latency of the answered cases, nearest rank), `tokens_per_s` (the median of the
node's reported generation speed), `schema_failures`, `errors` and `cases`.

Pure: no I/O but `load_evaluation_set` reading its file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from statistics import median
from typing import Any, Literal
from urllib.parse import unquote

import jsonschema
from jsonschema.validators import validator_for
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgefleet.proto.input_limits import MAX_JSON_DEPTH, JsonLimitError, brief, json_depth, loads_bounded
from edgefleet.proto.topics import check_name

MAX_CASES = 50
MAX_FILE_BYTES = 512 * 1024
MAX_TEXT_CHARS = 16 * 1024  # a prompt, a system prompt, a variable's value
MAX_MAX_TOKENS = 512
MAX_CONTAINS = 20
MAX_PATTERN_CHARS = 512
MAX_TOOLS = 32
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
ANSWERED = "answered"  # the implicit check of a case that names none


class EvaluationSetError(ValueError):
    """A set that cannot be used: the message names the file, the case and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _schema_ok(schema: dict[str, Any], what: str) -> None:
    try:
        validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"{what} is not a valid JSON schema: {e.message}") from None
    if json_depth(json.dumps(schema)) > MAX_JSON_DEPTH:
        raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")


def _tool_name(tool: Any, i: int) -> str:
    """The function name of an OpenAI tool definition, checked; ValueError naming tools[i]."""
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise ValueError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ValueError(f"{where}.function.name {brief(name)} must be 1-64 letters, digits, '_' or '-'")
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ValueError(f"{where}.function.parameters must be an object JSON schema")
        _schema_ok(params, f"{where}.function.parameters")
    return name


class EvalCase(_Strict):
    """One question and its checks (see the module docstring)."""

    id: str
    prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    template: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    system: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    collection: str | None = None
    max_tokens: int = Field(default=48, ge=1, le=MAX_MAX_TOKENS)
    contains: list[str] = Field(default_factory=list, max_length=MAX_CONTAINS)
    pattern: str | None = Field(default=None, max_length=MAX_PATTERN_CHARS)
    json_schema: dict[str, Any] | None = None
    constrained: bool = True
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "required"] = "auto"
    tool: str | None = None
    source: str | None = Field(default=None, min_length=1, max_length=512)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_name("case", v)

    @field_validator("template", "collection")
    @classmethod
    def _names(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_name(str(info.field_name), v)

    @field_validator("variables")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        for k, value in v.items():
            if len(value) > MAX_TEXT_CHARS:
                raise ValueError(f"variable {brief(k)} is over {MAX_TEXT_CHARS} characters")
        return v

    @field_validator("contains")
    @classmethod
    def _contains(cls, v: list[str]) -> list[str]:
        for s in v:
            if not s.strip() or len(s) > 512:
                raise ValueError(f"each expected text must be 1-512 characters, not only spaces ({brief(s)})")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"{brief(v)} is not a valid regular expression: {e}") from None
        return v

    @field_validator("json_schema")
    @classmethod
    def _json_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _schema_ok(v, "json_schema")
        return v

    @model_validator(mode="after")
    def _shape(self) -> EvalCase:
        if (self.prompt is None) == (self.template is None):
            raise ValueError("give exactly one of prompt (a user message) or template (+ variables)")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty")
        if self.variables and self.template is None:
            raise ValueError("variables are for a template case")
        if self.system is not None and self.template is not None:
            raise ValueError("system is for a prompt case: a template carries its own system prompt")
        names = [_tool_name(t, i) for i, t in enumerate(self.tools)]
        if len(set(names)) != len(names):
            raise ValueError(f"tools names must be unique: {names}")
        if self.tool is not None and self.tool not in names:
            raise ValueError(f"tool {self.tool!r} is not one of the case's tools ({', '.join(names) or 'none'})")
        if self.tool_choice != "auto" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if self.tools and self.json_schema is not None and self.constrained:
            raise ValueError("a constrained json_schema cannot stand beside tools: set constrained: false")
        if self.source is not None and self.collection is None:
            raise ValueError("source needs collection: the sources come from a knowledge collection")
        return self

    def check_names(self) -> list[str]:
        """The checks this case is scored on, in a fixed order."""
        names = [f"contains:{s}" for s in self.contains]
        names += [n for n, v in (("pattern", self.pattern), ("json_schema", self.json_schema),
                                 ("tool", self.tool), ("source", self.source)) if v is not None]  # fmt: skip
        return names or [ANSWERED]


class EvaluationSet(_Strict):
    name: str = ""
    cases: list[EvalCase] = Field(min_length=1, max_length=MAX_CASES)

    @model_validator(mode="after")
    def _unique(self) -> EvaluationSet:
        seen: set[str] = set()
        for c in self.cases:
            if c.id in seen:
                raise ValueError(f"case id {c.id!r} is used twice: ids must be unique")
            seen.add(c.id)
        return self


class Answer(_Strict):
    """What a node answered to one case (the runner gathers it from the chunks)."""

    text: str = ""
    tool_calls: list[str] = Field(default_factory=list)  # the names of the tools called, in order
    sources: list[str] = Field(default_factory=list)  # chunk ids `<collection>/<doc_id>#<i>`
    latency_ms: float = 0.0  # from sending the request to the last chunk
    tokens_per_s: float = 0.0  # the node's own figure (0: unknown, e.g. a one-token answer)
    completion_tokens: int = 0


class CaseScore(_Strict):
    case: str
    checks: dict[str, bool]
    error: str = ""  # why the node failed the case ('' when it answered)
    schema_failed: bool = False
    latency_ms: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def passed(self) -> int:
        return sum(self.checks.values())


class Figures(_Strict):
    """One node's figures over a set (see the module docstring)."""

    score: float = 0.0
    p95_ms: float = 0.0
    tokens_per_s: float = 0.0
    schema_failures: int = 0
    errors: int = 0
    cases: int = 0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items()}


def document_of(chunk_id: str, collection: str) -> str:
    """The document id a chunk id cites (`<collection>/<escaped doc_id>#<index>`), unescaped."""
    head, sep, index = chunk_id.rpartition("#")
    if not sep or not index.isdigit():
        head = chunk_id
    prefix = f"{collection}/"
    return unquote(head.removeprefix(prefix))


def _json_valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        value = loads_bounded(text.strip(), "answer", MAX_FILE_BYTES)
    except JsonLimitError:
        return False
    return jsonschema.validators.validator_for(schema)(schema).is_valid(value)


def score_answer(case: EvalCase, answer: Answer) -> CaseScore:
    """Every check of `case` against `answer`, pass or fail."""
    lower = answer.text.casefold()
    checks = {f"contains:{s}": s.casefold() in lower for s in case.contains}
    schema_failed = False
    if case.pattern is not None:
        checks["pattern"] = re.search(case.pattern, answer.text) is not None
    if case.json_schema is not None:
        checks["json_schema"] = _json_valid(answer.text, case.json_schema)
        schema_failed = not checks["json_schema"]
    if case.tool is not None:
        checks["tool"] = case.tool in answer.tool_calls
    if case.source is not None:
        assert case.collection is not None  # the model's validator
        checks["source"] = any(case.source in (s, document_of(s, case.collection)) for s in answer.sources)
    if not checks:
        checks[ANSWERED] = True
    return CaseScore(
        case=case.id,
        checks=checks,
        schema_failed=schema_failed,
        latency_ms=answer.latency_ms,
        tokens_per_s=answer.tokens_per_s,
    )


def case_failed(case: EvalCase, error: str, latency_ms: float = 0.0) -> CaseScore:
    """A case the node did not answer: every check failed, the error kept."""
    return CaseScore(
        case=case.id,
        checks=dict.fromkeys(case.check_names(), False),
        error=error or "failed",
        latency_ms=latency_ms,
    )


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def figures(scores: list[CaseScore]) -> Figures:
    """A node's figures over its case scores; errored cases count in `score` (as failed) and `errors`."""
    checks = sum(len(s.checks) for s in scores)
    passed = sum(s.passed for s in scores)
    answered = [s for s in scores if not s.error]
    speeds = [s.tokens_per_s for s in answered if s.tokens_per_s > 0]
    return Figures(
        score=round(passed / checks, 6) if checks else 0.0,
        p95_ms=round(_p95([s.latency_ms for s in answered]), 3),
        tokens_per_s=round(median(speeds), 3) if speeds else 0.0,
        schema_failures=sum(s.schema_failed for s in scores),
        errors=len(scores) - len(answered),
        cases=len(scores),
    )


# -- files ---------------------------------------------------------------------------------------------------
def _where(data: Any, loc: tuple[Any, ...]) -> str:
    """`case 'x' (cases[2]), field 'pattern'` for a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        i = loc[1]
        cases = data.get("cases") if isinstance(data, dict) else None
        raw = cases[i] if isinstance(cases, list) and i < len(cases) else None
        cid = raw.get("id") if isinstance(raw, dict) else None
        head = f"case {brief(cid)} (cases[{i}])" if isinstance(cid, str) else f"cases[{i}]"
        rest = ".".join(str(p) for p in loc[2:])
        return f"{head}, field {rest!r}" if rest else head
    return f"field {'.'.join(str(p) for p in loc)!r}" if loc else "the set"


def parse_evaluation_set(data: Any, source: str = "evaluation set") -> EvaluationSet:
    """An EvaluationSet from parsed JSON/YAML; EvaluationSetError naming `source`, the case and the field."""
    if isinstance(data, list):
        data = {"cases": data}  # a bare list of cases
    if not isinstance(data, dict):
        raise EvaluationSetError(f"{source}: an evaluation set is an object with 'cases' (a list), not {brief(data)}")
    try:
        return EvaluationSet.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors()[:5]:
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{_where(data, tuple(err['loc']))}: {msg}")
        more = f" (and {e.error_count() - 5} more)" if e.error_count() > 5 else ""
        raise EvaluationSetError(f"{source}: " + "; ".join(problems) + more) from None


def load_evaluation_set(path: Path) -> EvaluationSet:
    """Read a JSON (`.json`) or YAML file; EvaluationSetError with a message a person can act on."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise EvaluationSetError(f"{path}: cannot read the evaluation set: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise EvaluationSetError(f"{path}: {len(raw)} bytes, over the {MAX_FILE_BYTES} an evaluation set may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EvaluationSetError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            data = loads_bounded(text, str(path), MAX_FILE_BYTES)
        except JsonLimitError as e:
            raise EvaluationSetError(f"{path}: {e}") from None
    else:
        import yaml  # only files need it

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise EvaluationSetError(f"{path}: not valid YAML: {e}") from None
        except RecursionError:
            raise EvaluationSetError(f"{path}: nests too deeply") from None
    return parse_evaluation_set(data, str(path))
