"""The typed request of each operator command: what the command table validates before a handler runs.

The wire format (`proto.payloads.Command`) is one flat model for every op; each op takes only
the fields its request names, and a field it does not take is refused, not ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.proto.payloads import SHA256_FIELD, TemplateSpec, UploadChunk, check_groups
from edgefleet.proto.rules import RuleSpec
from edgefleet.proto.versions import Version

NonEmpty = Annotated[str, Field(min_length=1)]


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArguments(CommandRequest):
    """status, adapters, rules: read-only views of the whole site."""


class PushTemplateRequest(CommandRequest):
    target: NonEmpty
    template: TemplateSpec
    force: bool = False  # accept a version older than the one desired now
    new_group: bool = False  # a bare target naming no node and no known group becomes a new group


class RemoveEntryRequest(CommandRequest):
    """rm-template, rm-rule, rm-adapter, rm-knowledge: `name` out of `target`'s desired state."""

    target: NonEmpty
    name: NonEmpty


class UploadChunkRequest(CommandRequest):
    upload: UploadChunk


class PushArtifactRequest(CommandRequest):
    """push-adapter, push-knowledge: an uploaded file (by sha256), named and versioned, for `target`."""

    target: NonEmpty
    name: NonEmpty
    version: Version
    sha256: Annotated[str, SHA256_FIELD]
    new_group: bool = False


class PushRuleRequest(CommandRequest):
    target: NonEmpty
    rule: RuleSpec
    force: bool = False
    new_group: bool = False


class TelemetryHistoryRequest(CommandRequest):
    """The last hour of one node's telemetry, in one-minute means (the console's plots)."""

    target: NonEmpty  # node id, or node:<id>
    name: str = ""  # one metric; empty: all


class AssignGroupsRequest(CommandRequest):
    """The groups the orchestrator assigns to one node, beside its own ([]: take every assigned group away)."""

    target: NonEmpty  # node id, or node:<id>
    groups: list[str]

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return check_groups(v)
