"""Operator commands, typed once: one request model per op, and `Command`, their union on `op`.

The CLI, the console and the orchestrator share these models. A client builds a `Command`
(validated as it is built: `Command(op="rm-rule", target="line", name="r1")`), the orchestrator
parses one off the wire (`parse_payload(Command, raw)`, validated once) and its command table hands
the typed request (`Command.request`) to the op's one handler. Each op takes only the fields its
request names: a field it does not take is refused, not ignored.

Every request carries the signed envelope (proto/signing.py `sign_command`): operator, key id,
time, nonce and signature, all empty on an unsigned command. Ops marked `always_signed` (API
keys: their answers hold secrets) run only for an enrolled operator's signature, even on a site
that takes unsigned commands.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, RootModel, ValidationError, field_validator
from pydantic_core import PydanticUndefined

from edgefleet.proto.agent_commands import (
    AgentRunRequest,
    AgentRunsRequest,
    AgentsRequest,
    ApprovalsRequest,
    ApproveRequest,
    DenyRequest,
    RemoveAgentRequest,
    RemoveToolRequest,
    SetAgentRequest,
    SetToolRequest,
    ToolsRequest,
)
from edgefleet.proto.command_base import (
    MAX_KEY_MODELS,
    CommandRequest,
    FilterText,
    NonEmpty,
    PagedRequest,
    RemoveEntryRequest,
)
from edgefleet.proto.paging import NodeFilter
from edgefleet.proto.payloads import (
    SHA256_FIELD,
    PayloadError,
    TemplateSpec,
    UploadChunk,
    check_groups,
    validation_field,
)
from edgefleet.proto.release_commands import (
    RolloutAbortRequest,
    RolloutPauseRequest,
    RolloutPromoteRequest,
    RolloutResumeRequest,
    RolloutStartRequest,
    RolloutStatusRequest,
)
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.versions import Version


# -- the site, and what is desired where -------------------------------------------------------------
class StatusRequest(PagedRequest):
    """The nodes (one page): groups, profile, model, state, last seen, templates, in sync or drifted
    (why); with the site's summary (counts by state, out of sync, failed, with errors).

    The filters narrow the page and its `total`, not the summary; every filter set must hold."""

    op: Literal["status"] = "status"
    group: FilterText = ""  # in this group, or assigned to it
    state: Literal["", "online", "offline", "failed"] = ""
    profile: FilterText = ""
    model: FilterText = ""
    out_of_sync: bool = False  # only nodes whose reported state drifted from the desired one
    errors: bool = False  # only nodes whose engine failed or a transfer to which failed
    search: FilterText = ""  # part of the node id, any case

    def node_filter(self) -> NodeFilter:
        return NodeFilter(self.group, self.state, self.profile, self.model, self.out_of_sync, self.errors, self.search)


class PushTemplateRequest(CommandRequest):
    op: Literal["push-template"] = "push-template"
    target: NonEmpty  # `node:<id>`, `group:<name>`, or a bare name: a known node, else a group
    template: TemplateSpec
    force: bool = False  # accept a version older than the one desired now
    new_group: bool = False  # a bare target naming no node and no known group becomes a new group


class RemoveTemplateRequest(RemoveEntryRequest):
    op: Literal["rm-template"] = "rm-template"


class RulesRequest(PagedRequest):
    """The desired rules per target (one page of targets, by target key)."""

    op: Literal["rules"] = "rules"
    target: FilterText = ""  # only this target: `group:<g>`, `node:<n>`, or a bare name (either)


class PushRuleRequest(CommandRequest):
    op: Literal["push-rule"] = "push-rule"
    target: NonEmpty
    rule: RuleSpec
    force: bool = False
    new_group: bool = False


class RemoveRuleRequest(RemoveEntryRequest):
    op: Literal["rm-rule"] = "rm-rule"


# -- artifacts ---------------------------------------------------------------------------------------
class UploadChunkRequest(CommandRequest):
    """One piece of a file for a later push-adapter / push-knowledge (`fleet/uploads.py` sends them)."""

    op: Literal["upload-chunk"] = "upload-chunk"
    upload: UploadChunk


class AdaptersRequest(PagedRequest):
    """Which adapters and knowledge collections are where, in which version, and their transfers
    (one page of nodes; the manifests and the desired versions on every page)."""

    op: Literal["adapters"] = "adapters"
    group: FilterText = ""  # only nodes in this group, or assigned to it


class PushArtifactRequest(CommandRequest):
    """An uploaded file (by sha256), named and versioned, for `target`. `upload_only`: sign and keep
    its manifest (per version) and answer its `ArtifactRef` (`data.ref`), but publish nothing and
    leave every desired state alone: a rollout (`rollout-start`) then moves it node by node."""

    target: NonEmpty
    name: NonEmpty
    version: Version
    sha256: Annotated[str, SHA256_FIELD]
    new_group: bool = False
    upload_only: bool = False


class PushAdapterRequest(PushArtifactRequest):
    op: Literal["push-adapter"] = "push-adapter"


class RemoveAdapterRequest(RemoveEntryRequest):
    op: Literal["rm-adapter"] = "rm-adapter"


class PushKnowledgeRequest(PushArtifactRequest):
    op: Literal["push-knowledge"] = "push-knowledge"


class RemoveKnowledgeRequest(RemoveEntryRequest):
    op: Literal["rm-knowledge"] = "rm-knowledge"


class PushModelRequest(PushArtifactRequest):
    """An uploaded GGUF base model as `target`'s model (`DesiredState.model`): the orchestrator reads
    its header (architecture, KV bytes per token: proto/model_gguf.py), signs its manifest and
    publishes it under the target's scope. `upload_only`: sign and store the manifest and answer its
    `ArtifactRef`, but publish nothing and leave the desired state alone (a rollout moves it)."""

    op: Literal["push-model"] = "push-model"
    force: bool = False  # accept a version older than the one desired (or pushed) now


class RemoveModelRequest(CommandRequest):
    """`target` back to the nodes' own model: `DesiredState.model` cleared."""

    op: Literal["rm-model"] = "rm-model"
    target: NonEmpty


# -- nodes -------------------------------------------------------------------------------------------
class TelemetryHistoryRequest(CommandRequest):
    """The last hour of one node's telemetry, in one-minute means (the console's plots)."""

    op: Literal["telemetry-history"] = "telemetry-history"
    target: NonEmpty  # node id, or node:<id>
    name: str = ""  # one metric; empty: all


class GroupPolicyRequest(CommandRequest):
    """A group's policy: `require_rollouts` on, a direct push (template, rule, agent, tool, adapter,
    knowledge, model) to the group or to one of its nodes is refused: its changes go out as releases
    (`rollout-start`). Off (the default): pushes go at once, as before."""

    names_operator: ClassVar[bool] = True
    op: Literal["group-policy"] = "group-policy"
    group: NonEmpty  # a group name, or group:<name>
    require_rollouts: bool


class AssignGroupsRequest(CommandRequest):
    """The groups the orchestrator assigns to one node, beside its own ([]: take every assigned group away)."""

    op: Literal["assign-groups"] = "assign-groups"
    target: NonEmpty  # node id, or node:<id>
    groups: list[str]

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return check_groups(v)


# -- API keys of the front door (the orchestrator's key database) ------------------------------------
class KeysRequest(CommandRequest):
    always_signed: ClassVar[bool] = True


class KeysCreateRequest(KeysRequest):
    """A new key; the answer holds its token, shown once (only a hash of its secret is kept)."""

    op: Literal["keys-create"] = "keys-create"
    name: NonEmpty
    models: Annotated[list[NonEmpty], Field(max_length=MAX_KEY_MODELS)] = Field(default_factory=list)  # []: all
    rpm: Annotated[int, Field(ge=0)] = 0  # requests per minute; 0: no limit
    tpm: Annotated[int, Field(ge=0)] = 0  # tokens per minute; 0: no limit
    expires: Annotated[str, Field(max_length=64)] = ""  # ISO 8601, or Nd/Nh/Nm from now; empty: never
    # collections it may read: []: none (the default: least privilege); ["*"]: all
    collections: Annotated[list[NonEmpty], Field(max_length=MAX_KEY_MODELS)] = Field(default_factory=list)
    identity: Annotated[str, Field(max_length=64)] = ""  # a site certificate's name (CN) it sets the limits of


class KeysListRequest(KeysRequest):
    """Every key with its limits, state and usage; never a secret."""

    op: Literal["keys-list"] = "keys-list"


class KeysRevokeRequest(KeysRequest):
    """Revoke a key by name: the front door refuses it within a second."""

    op: Literal["keys-revoke"] = "keys-revoke"
    name: NonEmpty


AnyCommandRequest = Annotated[
    StatusRequest
    | PushTemplateRequest
    | RemoveTemplateRequest
    | UploadChunkRequest
    | PushAdapterRequest
    | RemoveAdapterRequest
    | AdaptersRequest
    | PushRuleRequest
    | RemoveRuleRequest
    | RulesRequest
    | PushKnowledgeRequest
    | RemoveKnowledgeRequest
    | PushModelRequest
    | RemoveModelRequest
    | TelemetryHistoryRequest
    | AssignGroupsRequest
    | GroupPolicyRequest
    | KeysCreateRequest
    | KeysListRequest
    | KeysRevokeRequest
    | SetToolRequest
    | RemoveToolRequest
    | SetAgentRequest
    | RemoveAgentRequest
    | ToolsRequest
    | AgentsRequest
    | AgentRunsRequest
    | AgentRunRequest
    | ApprovalsRequest
    | ApproveRequest
    | DenyRequest
    | RolloutStartRequest
    | RolloutStatusRequest
    | RolloutPauseRequest
    | RolloutResumeRequest
    | RolloutPromoteRequest
    | RolloutAbortRequest,
    Field(discriminator="op"),
]

REQUEST_TYPES: tuple[type[CommandRequest], ...] = get_args(get_args(AnyCommandRequest)[0])


def op_of(request: type[CommandRequest]) -> str:
    """The op a request type answers to (its `op` literal)."""
    return str(request.model_fields["op"].default)


COMMAND_OPS: frozenset[str] = frozenset(op_of(r) for r in REQUEST_TYPES)


def _problems(e: ValidationError, op: object) -> str:
    """`field: problem; …` without the op that leads each location of a tagged union's errors."""
    return "; ".join(
        f"{'.'.join(str(p) for p in (err['loc'][1:] if err['loc'][:1] == (op,) else err['loc'])) or '(root)'}: "
        f"{err['msg']}"
        for err in e.errors()
    )


class Command(RootModel[AnyCommandRequest]):
    """An operator command on the wire: one op's request, chosen by `op`.

    Built with the op's fields (`Command(op="status")`) or around a request (`Command(request)`);
    a command that does not validate raises `PayloadError` naming the field and the problem (its
    `field`: the request field, dotted, when the problems are in one)."""

    def __init__(self, /, root: Any = PydanticUndefined, **data: Any) -> None:
        try:
            super().__init__(root, **data)
        except ValidationError as e:
            op = data.get("op", root.get("op") if isinstance(root, dict) else getattr(root, "op", ""))
            raise PayloadError(f"invalid {op or 'command'} command: {_problems(e, op)}", validation_field(e, op)) from e

    # not a custom __init__ to pydantic: `model_validate` (the wire) validates as pydantic does, once
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @property
    def request(self) -> CommandRequest:
        return self.root

    @property
    def op(self) -> str:
        return self.root.op

    @property
    def operator(self) -> str:
        """Who signed it (empty: unsigned)."""
        return self.root.operator

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()
