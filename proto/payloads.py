"""Versioned JSON payloads of the MQTT contract, validated by pydantic on both sides.

Every payload carries `v` (the payload version). A receiver refuses a version it does not know
and anything that does not validate, with a reason on the errors topic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from edgefleet.proto.agents import AgentRule, ToolSpec
from edgefleet.proto.input_limits import MAX_JSON_DEPTH, JsonLimitError, brief, loads_bounded
from edgefleet.proto.payload_base import PAYLOAD_VERSION, _now, _Payload
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.topics import check_name
from edgefleet.proto.versions import Version

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_TEMPLATE_CHARS = 32 * 1024


class PayloadError(ValueError):
    """A payload that cannot be accepted; the message says why, `field` where (empty: no one field)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


P = TypeVar("P", bound=BaseModel)  # a payload, or a union of payloads (proto/commands.py `Command`)


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    quantization: str = ""
    sha256: str = ""


class NodeInfoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    profile: str
    groups: list[str]
    model: ModelRef
    grpc_address: str = ""
    adapters: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    assigned_groups: list[str] = Field(default_factory=list)  # of `groups`, those the orchestrator assigned
    insecure: bool = False  # the node runs with EDGEFLEET_INSECURE: plaintext gRPC/MQTT, nothing verified


class NodeStatus(_Payload):
    node_id: str
    state: Literal["online", "offline", "failed"]  # failed: the engine died; the process exits to be restarted
    ts: float = Field(default_factory=_now)
    reason: str = ""
    info: NodeInfoPayload | None = None


class Telemetry(_Payload):
    node_id: str
    ts: float = Field(default_factory=_now)
    queue_depth: int
    slots_busy: int
    slots_total: int
    slots_available: int
    tokens_per_second: float
    temperature_c: float | None
    throttled: bool
    shedding: bool
    rss_bytes: int
    inbox_depth: int = 0  # sensor messages accepted, not yet answered
    outbox_depth: int = 0  # answers not yet confirmed by the broker
    holding: int = 0  # messages left unacknowledged because the inbox (or the disk) is full
    rules: dict[str, RuleTelemetry] = Field(default_factory=dict)
    disk_free_bytes: int | None = None  # free space in the node's data directory
    disk_total_bytes: int | None = None
    disk_low: bool = False  # free space below the node's EDGEFLEET_DISK_WARN_MB
    storage_full: bool = False  # a write found the disk full and waits to be tried again
    handler_errors: int = 0  # MQTT handlers that raised since the node started (each reported)


class RuleTelemetry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    messages_in: int
    duplicates: int
    answered: int
    errors: int
    latency_p50_ms: float | None


class TemplateSpec(BaseModel):
    """A prompt template: a sandboxed Jinja2 body with declared variables and an optional system prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: Version
    template: Annotated[str, Field(min_length=1, max_length=MAX_TEMPLATE_CHARS)]
    system: Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)] = ""
    variables: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("template", v)

    @field_validator("variables")
    @classmethod
    def _vars(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"variable {name!r} is not an identifier")
        return v


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["node", "group"]
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("target", v)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


SHA256_FIELD = Field(pattern=r"^[0-9a-f]{64}$")


class ArtifactRef(BaseModel):
    """An artifact a target should hold: the node fetches it through its signed manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: Version
    sha256: Annotated[str, SHA256_FIELD]
    size: Annotated[int, Field(gt=0)]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("artifact", v)


MAX_GENERATION = 2**53  # exact in every JSON reader (a double), far below SQLite's INTEGER limit (2**63 - 1)


class DesiredState(_Payload):
    """What one target should run. `generation` only grows (1 ≤ generation ≤ 2**53); a node ignores older ones."""

    site: str
    target: Target
    generation: Annotated[int, Field(ge=1, le=MAX_GENERATION)]
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    adapters: dict[str, ArtifactRef] = Field(default_factory=dict)
    knowledge: dict[str, ArtifactRef] = Field(default_factory=dict)  # collection → the version to install
    rules: dict[str, RuleSpec] = Field(default_factory=dict)
    tools: dict[str, ToolSpec] = Field(default_factory=dict)  # site tools the node's agents may call
    agents: dict[str, AgentRule] = Field(default_factory=dict)  # agent rules (see proto/agents.py)
    # the base model (a signed GGUF artifact); None: the node's own (EDGEFLEET_MODEL, else its profile's)
    model: ArtifactRef | None = None
    ts: float = Field(default_factory=_now)
    # signed by the orchestrator (see proto/signing.py): the signing key's fingerprint, and the
    # base64 Ed25519 signature over the document without `signature`; empty: unsigned
    key_id: Annotated[str, Field(max_length=64)] = ""
    signature: Annotated[str, Field(max_length=256)] = ""


MAX_ASSIGNED_GROUPS = 32


class GroupAssignment(_Payload):
    """The groups the orchestrator adds to a node's own (EDGEFLEET_GROUPS) at run time.

    Retained on `assign/node/<id>`, signed with the site key like desired state (see
    proto/signing.py `sign_assignment`). `generation` only grows; an empty `groups` list takes
    every assigned group away. The node's effective groups are its own, then these."""

    site: str
    node_id: str
    groups: Annotated[list[str], Field(max_length=MAX_ASSIGNED_GROUPS)] = Field(default_factory=list)
    generation: Annotated[int, Field(ge=1, le=MAX_GENERATION)]
    ts: float = Field(default_factory=_now)
    key_id: Annotated[str, Field(max_length=64)] = ""
    signature: Annotated[str, Field(max_length=256)] = ""

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_name("node", v)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return check_groups(v)

    @property
    def key(self) -> str:
        """Its key among a node's reported generations: `assign:<node>`."""
        return f"assign:{self.node_id}"


def check_groups(groups: list[str]) -> list[str]:
    """Valid, distinct group names, in the order given (ValueError naming the bad one)."""
    for g in groups:
        check_name("group", g)
    if len(set(groups)) != len(groups):
        raise ValueError(f"groups {groups} name a group twice")
    return groups


def effective_groups(own: list[str], assigned: list[str]) -> list[str]:
    """A node's groups: its own (profile, EDGEFLEET_GROUPS) first, then the assigned ones not among them."""
    return list(dict.fromkeys([*own, *assigned]))


def merged(docs: dict[str, DesiredState], node_id: str, groups: list[str], field: str) -> dict[str, Any]:
    """What one node should have of `field` (templates, adapters, knowledge): its groups' entries in
    the node's group order, then its own, which win on a name clash."""
    out: dict[str, Any] = {}
    for key in [*(f"group:{g}" for g in groups), f"node:{node_id}"]:
        if key in docs:
            out.update(getattr(docs[key], field))
    return out


def effective_model(docs: dict[str, DesiredState], node_id: str, groups: list[str]) -> ArtifactRef | None:
    """The base model one node should run: its own document's, else the last of its groups' (in the
    node's group order) that names one; None: the node's own model."""
    chosen: ArtifactRef | None = None
    for key in [*(f"group:{g}" for g in groups), f"node:{node_id}"]:
        doc = docs.get(key)
        if doc is not None and doc.model is not None:
            chosen = doc.model
    return chosen


class TransferProgress(BaseModel):
    """Where a node is with one artifact: chunks held of the total, and the outcome."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["adapter", "knowledge", "model"]
    name: str
    version: str
    have: int
    total: int
    resumed_from: int = 0  # chunks already on disk when this run of the node started the transfer
    state: Literal["fetching", "verifying", "installed", "failed"]
    error: str = ""


class ReportedState(_Payload):
    node_id: str
    ts: float = Field(default_factory=_now)
    generations: dict[str, int] = Field(default_factory=dict)  # target key → applied generation
    templates: dict[str, str] = Field(default_factory=dict)  # name → version in effect
    adapters: dict[str, str] = Field(default_factory=dict)  # name → version loaded
    knowledge: dict[str, str] = Field(default_factory=dict)  # collection → version installed
    transfers: dict[str, TransferProgress] = Field(default_factory=dict)  # `<kind>/<name>` → progress
    errors: list[str] = Field(default_factory=list)  # why something desired is not applied
    groups: list[str] = Field(default_factory=list)  # effective groups: its own, then the assigned ones
    model: str = ""  # the base model serving: `<name>@<version>` when it came as an artifact, else its catalog name


class InferenceRequest(_Payload):
    """Ad-hoc inference over MQTT 5 request/response: exactly one of prompt or template."""

    prompt: Annotated[str, Field(max_length=64 * 1024)] = ""
    template: str = ""
    variables: dict[str, str] = Field(default_factory=dict)
    max_tokens: Annotated[int, Field(ge=1, le=4096)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    json_schema: dict[str, Any] | None = None
    adapter: str = ""


class InferenceResponse(_Payload):
    node_id: str
    ok: bool
    text: str = ""
    error_code: str = ""
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_ms: float = 0.0


class ErrorReport(_Payload):
    source: str
    code: str
    message: str
    topic: str = ""
    ts: float = Field(default_factory=_now)


class OrchestratorStatus(_Payload):
    state: Literal["online", "offline"]
    ts: float = Field(default_factory=_now)


class ChunkRequest(_Payload):
    """A node asks for the chunks of an artifact it is missing (a window of them at a time).

    `scope`: the target whose manifest it took (`group/<g>` or `node/<n>`, proto/topics.py's
    `artifact_scope`); the chunks are sent on that scope's topics, and only to a node of it."""

    node_id: str
    scope: str
    kind: Literal["adapter", "knowledge", "model"]
    name: str
    version: Version
    sha256: Annotated[str, SHA256_FIELD]
    chunks: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=1024)]

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        kind, _, target = v.partition("/")
        if kind not in ("group", "node"):
            raise ValueError(f"scope {brief(v)} must be group/<name> or node/<name>")
        check_name(kind, target)
        return v


MAX_UPLOAD_CHUNK_BYTES = 128 * 1024  # base64 of it stays under MAX_PAYLOAD_BYTES


class UploadChunk(BaseModel):
    """One piece of a file the CLI hands to the orchestrator (base64), addressed by the file's sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: Annotated[str, SHA256_FIELD]
    size: Annotated[int, Field(gt=0, le=2 * 1024**3)]
    chunk_bytes: Annotated[int, Field(ge=1024, le=MAX_UPLOAD_CHUNK_BYTES)]
    index: Annotated[int, Field(ge=0)]
    data: str


class CommandResult(_Payload):
    """The answer to a `Command` (proto/commands.py)."""

    ok: bool
    message: str = ""
    code: str = ""  # an ErrorCode value when ok is false (kept a str: an older peer's code still parses)
    field: str = ""  # the request field a refusal is about, dotted ("target", "template.version"); empty: none
    data: dict[str, Any] = Field(default_factory=dict)


def parse_payload(model: type[P], raw: bytes | bytearray) -> P:
    """Size, UTF-8, JSON (nesting bounded), version and schema checks, each with a message a person can act on."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(f"payload is not UTF-8: {e}") from e
    try:
        data = loads_bounded(bytes(raw), "payload", MAX_PAYLOAD_BYTES, MAX_JSON_DEPTH)
    except JsonLimitError as e:
        raise PayloadError(str(e).replace("is not valid JSON", "is not JSON")) from e
    if not isinstance(data, dict):
        raise PayloadError("payload must be a JSON object")
    if data.get("v") != PAYLOAD_VERSION:
        raise PayloadError(f"payload version {brief(data.get('v'))} is not supported (expected {PAYLOAD_VERSION})")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # a root model over a tagged union (`Command`): its errors' locations start with the op
        tag = data.get("op") if isinstance(model, type) and issubclass(model, RootModel) else None
        raise PayloadError(
            f"invalid {model.__name__}: {_clip(describe_validation_error(e))}", validation_field(e, tag)
        ) from e


def _clip(message: str, limit: int = 600) -> str:
    """A validation message cut short: pydantic quotes the client's values whole."""
    return message if len(message) <= limit else f"{message[:limit]}… ({len(message)} characters)"


def validation_field(e: ValidationError, tag: object = None) -> str:
    """The field a validation error is about, dotted: the deepest one holding every problem ("" for none).

    `tag` is the discriminator value that leads the locations of a tagged union's errors (a `Command`'s op)."""
    paths = [err["loc"][1:] if tag is not None and err["loc"][:1] == (tag,) else err["loc"] for err in e.errors()]
    common: list[str] = []
    for parts in zip(*paths, strict=False):
        if any(p != parts[0] for p in parts):
            break
        common.append(str(parts[0]))
    return ".".join(common)


def describe_validation_error(e: ValidationError) -> str:
    """`field.path: problem; …`, the way every edge of edgefleet reports a pydantic error."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
