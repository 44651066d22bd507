"""Taking desired state (agent.py): whether a document that arrived is taken, and putting the
effective state of all documents into the node's parts.

A document is checked on arrival (`DesiredIntake.arrived`): well-formed, signed by a pinned key
when one is, for this site and for the topic it came on. Then against what is applied
(`DesiredIntake.verdict`, under the agent's lock): an older generation is ignored, the same one
changes nothing, a newer one (whose templates all compile) is applied. A node that pins the site's
public key(s) (EDGEFLEET_SITE_PUBLIC_KEY) takes only documents the site signed (proto/signing.py):
unsigned (UNSIGNED), signed by another key or altered (BAD_SIGNATURE), an older generation or
another document at the generation applied (REPLAYED) are refused, and the node stays on the last
good generation. A `Refusal` carries the error code and the message the agent reports.

`apply_effective` puts the templates, adapters, knowledge, base model, sensor rules and agents that
this node's documents (its own and its groups') add up to into the parts that serve them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from edgefleet.node.agents.catalogue import effective_agents, effective_tools
from edgefleet.node.agents.runner import AgentRunner
from edgefleet.node.control.artifact_sync import ArtifactSync
from edgefleet.node.control.desired_store import (
    DesiredStateStore,
    effective_adapters,
    effective_knowledge,
    effective_rules,
    effective_templates,
    same_document,
)
from edgefleet.node.control.faults import parse_bounded
from edgefleet.node.control.model_sync import ModelSync
from edgefleet.node.sensors.plane import SensorPlane
from edgefleet.node.service import NodeService
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import DesiredState, PayloadError, effective_model
from edgefleet.proto.signing import KeyRing, SignatureError
from edgefleet.proto.templates import TemplateError, compile_template
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.node.control")


@dataclass(frozen=True)
class Refusal:
    """A document not taken: the error code and the message for the errors topic."""

    code: str
    message: str


class DesiredIntake:
    def __init__(self, site: str, topics: Topics, keys: KeyRing, store: DesiredStateStore) -> None:
        self.site, self.topics, self.keys, self.store = site, topics, keys, store

    def arrived(self, topic: str, payload: bytes | bytearray) -> DesiredState | Refusal:
        """The document on `topic`, or why it is refused (whatever is applied)."""
        try:
            doc = parse_bounded(DesiredState, payload)
        except PayloadError as e:
            return Refusal(ErrorCode.INVALID_PAYLOAD, f"desired state on {topic} refused: {e}")
        if self.keys:
            try:
                self.keys.verify(doc)
            except SignatureError as e:
                return Refusal(e.code, f"desired state on {topic} refused: {e}")
        if doc.site != self.site:
            return Refusal(ErrorCode.WRONG_SITE, f"desired state for site {doc.site!r} refused on site {self.site!r}")
        if self.topics.desired_target(topic) != (doc.target.kind, doc.target.name):
            return Refusal(ErrorCode.WRONG_TARGET, f"desired state for {doc.target.key} arrived on {topic}")
        return doc

    def verdict(self, doc: DesiredState) -> Literal["apply", "same", "older"] | Refusal:
        """Against the generation applied for its target: "apply" (newer, its templates compile),
        "same" (nothing changes), "older" (ignored), or a refusal."""
        applied = self.store.generation(doc.target.key)
        if self.keys and (replay := self._replayed(doc, applied)) is not None:
            return replay
        if doc.generation < applied:
            log.info(
                "older desired state ignored",
                extra={"target": doc.target.key, "generation": doc.generation, "applied": applied},
            )
            return "older"
        if doc.generation == applied:
            return "same"
        try:
            for spec in doc.templates.values():
                compile_template(spec)
        except TemplateError as e:
            return Refusal(ErrorCode.TEMPLATE_ERROR, f"generation {doc.generation} of {doc.target.key} refused: {e}")
        return "apply"

    def _replayed(self, doc: DesiredState, applied: int) -> Refusal | None:
        """A signed document that must not be taken again: older than the one applied, or another
        document at its generation (the same one, sent again on a reconnect, is not a replay)."""
        if doc.generation > applied:
            return None
        if doc.generation == applied:
            held = self.store.doc(doc.target.key)
            if held is None or same_document(held, doc):
                return None
        return Refusal(
            ErrorCode.REPLAYED,
            f"generation {doc.generation} of {doc.target.key} refused: generation {applied} is applied "
            f"(a replayed or reused generation)",
        )


def apply_effective(
    docs: dict[str, DesiredState],
    node_id: str,
    groups: list[str],
    *,
    service: NodeService,
    adapters: ArtifactSync | None,
    knowledge: ArtifactSync | None,
    model: ModelSync | None,
    sensors: SensorPlane | None,
    agents: AgentRunner | None,
) -> None:
    """Each part gets what `docs` say for this node and its groups (a stored template that no longer
    compiles is logged and left out)."""
    specs = effective_templates(docs, node_id, groups)
    compiled = {}
    for name, spec in specs.items():
        try:
            compiled[name] = compile_template(spec)
        except TemplateError as e:  # stored earlier by another version of edgefleet
            log.error("stored template does not compile", extra={"template": name, "reason": str(e)})
    service.set_templates(compiled)  # one assignment: requests see the old set or the new
    if adapters is not None:
        adapters.set_wanted(effective_adapters(docs, node_id, groups))
    if knowledge is not None:
        knowledge.set_wanted(effective_knowledge(docs, node_id, groups))
    if model is not None:
        model.set_wanted_model(effective_model(docs, node_id, groups))
    if sensors is not None:
        sensors.set_rules(effective_rules(docs, node_id, groups))
    if agents is not None:
        tools, agents_ = effective_tools(docs, node_id, groups), effective_agents(docs, node_id, groups)
        agents.set_catalogue(tools, agents_)
