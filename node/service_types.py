"""The node's service requests and answers as every edge hands them over (gRPC, MQTT, CLI, agents):
a chat turn, a generation request not yet validated, what the engine took, and what the node serves.
Plain data: `NodeService` (node/service.py) validates and acts on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgefleet.node.knowledge.grounded_sink import Grounding
from edgefleet.node.model_catalog import ModelFile
from edgefleet.node.thermal import ThermalState
from edgefleet.node.tool_calls.types import ToolCall, ToolChoice, ToolDef


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the calls it made
    tool_call_id: str = ""  # tool: the call this message answers
    name: str = ""  # tool: the function's name (optional)


@dataclass(frozen=True)
class GenerateInput:
    """A generation request as any edge (gRPC, MQTT, CLI) hands it over, not yet validated."""

    prompt: str = ""
    messages: tuple[ChatTurn, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: str = ""
    adapter: str = ""
    adapter_scale: float | None = None
    template: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    collection: str = ""  # retrieval: answer from this knowledge collection
    retrieval_top_k: int = 0
    tools: tuple[ToolDef, ...] = ()  # functions the model may call (see node/tool_calls)
    tool_choice: ToolChoice | None = None  # None: auto when tools are given
    parallel_tool_calls: bool = True
    tools_unconstrained: bool = False  # evaluation only: described and parsed, not enforced


@dataclass(frozen=True)
class Queued:
    """A generation the engine has taken: its retrieval sources and the prompt it reads first."""

    sources: list[str]
    prompt_tokens: int
    template: str = ""  # `name@version` of the template rendered into the prompt, "" without one
    adapter: str = ""  # `name@version` of the adapter pinned for the request, "" without one
    # A knowledge answer (retrieval, free text): its sources and, once Finished is sent, the verdict of the
    # support check (citations, abstained); None without retrieval or for JSON / tool-call answers.
    grounding: Grounding | None = None


@dataclass(frozen=True)
class ServingState:
    """What this node is serving and how loaded it is right now (not the MQTT status payload, proto's NodeStatus)."""

    node_id: str
    profile: str
    model: ModelFile
    model_meta: dict[str, object]
    n_ctx: int
    slots_total: int
    slots_busy: int
    slots_available: int
    queue_depth: int
    queue_limit: int
    thermal: ThermalState
    memory_budget_bytes: int
    memory_estimate_bytes: int
    rss_bytes: int
    status: str
    versions: dict[str, str] = field(default_factory=dict)
    kv_type: str = "f16"  # the KV cache cells the engine got (node/engine/kv_type.py)


Embed = Callable[[list[str]], list[list[float]]]
"""Texts in, their normalized vectors out (blocking): how the knowledge store embeds through the node."""
