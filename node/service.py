"""Node services: typed requests in, engine work out. gRPC, MQTT (ad-hoc requests, sensor rules) and
the CLI translate to these.

`NodeService` is fixed once built: its parts (adapter manager, knowledge store) are given to the
constructor, and what changes at run time (templates, groups, draining) changes through methods,
each one assignment, so a reader sees the old value or the new.
"""

from __future__ import annotations

import math
import platform
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from importlib import metadata

import psutil
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from edgefleet.node.adapter_manager import AdapterManager
from edgefleet.node.engine.engine import Engine
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.types import EventSink, GenerationRequest, SamplingParams
from edgefleet.node.errors import Draining, InvalidRequest, Unavailable
from edgefleet.node.grammar import GrammarCache
from edgefleet.node.knowledge.grounded_sink import GroundedSink, abstain_now
from edgefleet.node.knowledge.service import KnowledgeService
from edgefleet.node.model_catalog import ModelFile
from edgefleet.node.profiles import FirmwareProfile
from edgefleet.node.prompt_building import PromptBuilding
from edgefleet.node.service_types import Embed, GenerateInput, Queued, ServingState
from edgefleet.node.settings import NodeSettings
from edgefleet.node.thermal import ThermalGovernor, ThermalState
from edgefleet.node.tool_calls import formats
from edgefleet.node.tool_calls.plan import ToolPlan, plan
from edgefleet.node.tool_calls.stream import ToolCallSink
from edgefleet.node.tool_calls.validate import check_messages, check_tools
from edgefleet.plumbing import failpoints
from edgefleet.proto.input_limits import brief
from edgefleet.proto.templates import CompiledTemplate

PREPARE_FAILPOINT = "service.prepare"  # a request admitted, not yet in the engine (tests hold it here)
MAX_STOP_CHARS = 64


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class NodeService(PromptBuilding):
    def __init__(
        self,
        settings: NodeSettings,
        profile: FirmwareProfile,
        model_file: ModelFile,
        model: LoadedModel,
        engine: Engine,
        thermal: ThermalGovernor,
        memory: dict[str, int],
        adapter_manager: AdapterManager | None = None,
        open_knowledge: Callable[[Embed], KnowledgeService] | None = None,
    ) -> None:
        """`open_knowledge`: opens the knowledge store, given this service's embedding function."""
        self.settings = settings
        self.profile = profile
        self.model_file = model_file
        self.model = model
        self.engine = engine
        self.thermal = thermal
        self.memory = memory
        self._draining = False
        self._admit = threading.Lock()
        self._preparing = 0  # admitted (past the draining check), not yet in the engine: a drain waits for them
        self.grammars = GrammarCache()
        self._templates: dict[str, CompiledTemplate] = {}
        self._groups = list(dict.fromkeys([profile.name, *settings.groups]))
        self._adapter_manager = adapter_manager
        meta = model.meta
        self._chat = (
            Jinja2ChatFormatter(meta.chat_template, eos_token=meta.eos_text, bos_token=meta.bos_text)
            if meta.chat_template
            else None
        )
        self._native_tools = settings.tool_format == "native" and formats.is_native(meta.chat_template)
        self.versions = {
            "edgefleet": _version("edgefleet"),
            "llama_cpp_python": _version("llama-cpp-python"),
            "grpc": _version("grpcio"),
            "python": platform.python_version(),
        }
        self._knowledge = open_knowledge(self._embed_for_knowledge) if open_knowledge is not None else None

    # -- what it is built with, and what changes through methods -----------------------------
    @property
    def adapter_manager(self) -> AdapterManager | None:
        return self._adapter_manager

    @property
    def knowledge(self) -> KnowledgeService | None:
        return self._knowledge

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """Refuse new work from now on (shutdown); work in flight finishes."""
        with self._admit:
            self._draining = True

    @property
    def preparing(self) -> int:
        """Requests admitted before a drain and not yet handed to the engine (engine.outstanding counts those)."""
        return self._preparing

    @property
    def templates(self) -> dict[str, CompiledTemplate]:
        """The templates in effect (replaced whole by `set_templates`: never changed in place)."""
        return self._templates

    def set_templates(self, templates: dict[str, CompiledTemplate]) -> None:
        self._templates = dict(templates)
        if self.engine.prefixes is not None:  # saved prefixes of templates changed or gone: off the disk
            self.engine.prefixes.store.retain_templates({f"{t.spec.name}@{t.spec.version}" for t in templates.values()})

    @property
    def groups(self) -> list[str]:
        """The node's effective groups: its own (profile, EDGEFLEET_GROUPS), then those assigned."""
        return self._groups

    def set_groups(self, groups: list[str]) -> None:
        self._groups = list(groups)

    def _embed_for_knowledge(self, texts: list[str]) -> list[list[float]]:
        fut, _ = self.embed(texts, True)
        return fut.result(120)

    # -- generation ----------------------------------------------------------------------
    @property
    def max_tokens_limit(self) -> int:
        return min(self.settings.max_tokens_limit, self.engine.config.n_ctx_slot)

    def _sampling(self, inp: GenerateInput) -> SamplingParams:
        max_tokens = self.settings.default_max_tokens if inp.max_tokens is None else inp.max_tokens
        limit = self.max_tokens_limit
        if not 1 <= max_tokens <= limit:
            raise InvalidRequest(f"max_tokens must be between 1 and {limit}, got {max_tokens}")
        temperature = 0.8 if inp.temperature is None else inp.temperature
        if not math.isfinite(temperature) or not 0.0 <= temperature <= 5.0:
            raise InvalidRequest(f"temperature must be between 0 and 5, got {temperature}")
        top_p = 0.95 if inp.top_p is None else inp.top_p
        if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}")
        top_k = 40 if inp.top_k is None else inp.top_k
        if not 0 <= top_k <= self.model.n_vocab:
            raise InvalidRequest(f"top_k must be between 0 and {self.model.n_vocab}, got {top_k}")
        if len(inp.stop) > self.settings.max_stop_strings:
            raise InvalidRequest(f"at most {self.settings.max_stop_strings} stop strings, got {len(inp.stop)}")
        for s in inp.stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise InvalidRequest(f"each stop string must be 1 to {MAX_STOP_CHARS} characters, got {brief(s)}")
        seed = secrets.randbits(32) if inp.seed is None else inp.seed
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=tuple(inp.stop),
            grammar=self._grammar(inp.json_schema),
        )

    def _tool_plan(self, inp: GenerateInput) -> ToolPlan | None:
        """Tools, tool_choice and tool messages checked; what the engine and parser need (None: no tools)."""
        choice = check_tools(inp.tools, inp.tool_choice, inp.json_schema, inp.tools_unconstrained)
        check_messages(inp.messages)
        if not inp.tools:
            return None
        return plan(self.model, inp.tools, choice, inp.parallel_tool_calls, inp.tools_unconstrained)

    @staticmethod
    def _with_tools(params: SamplingParams, tools: ToolPlan | None) -> SamplingParams:
        if tools is None:
            return params
        return replace(
            params,
            grammar=tools.grammar,
            grammar_lazy=tools.lazy,
            trigger_tokens=tools.trigger_tokens,
            trigger_patterns=tools.trigger_patterns,
            banned_tokens=tools.banned_tokens,
            text_tokens=tools.text_tokens,
        )

    def generate(self, inp: GenerateInput, request_id: str, sink: EventSink, arrived: float) -> list[str]:
        """Validate and queue; events reach `sink` on the engine thread. Raises typed errors.

        Returns the knowledge chunk ids put into the prompt (retrieval), else [].
        """
        return self.generate_queued(inp, request_id, sink, arrived).sources

    def generate_queued(self, inp: GenerateInput, request_id: str, sink: EventSink, arrived: float) -> Queued:
        """`generate`, also telling how many prompt tokens the engine has to read first."""
        self.engine.check_alive()
        with self._admit:
            if self._draining:
                raise Draining("node is draining for shutdown; send the request to another node")
            self._preparing += 1
        try:
            return self._prepare_and_submit(inp, request_id, sink, arrived)
        finally:  # in the engine by now (counted there), or refused
            with self._admit:
                self._preparing -= 1

    def _prepare_and_submit(self, inp: GenerateInput, request_id: str, sink: EventSink, arrived: float) -> Queued:
        failpoints.hit(PREPARE_FAILPOINT)
        if self.thermal.state.shedding:
            raise Unavailable(
                f"node is shedding load: {self.thermal.state.temperature_c:.1f} C is at or above the "
                f"shed temperature {self.profile.thermal.shed_c:.1f} C; retry later or on another node"
            )
        tools = self._tool_plan(inp)
        params = self._with_tools(self._sampling(inp), tools)
        template = self._template(inp)
        tokens, retrieved, prefix_len = self._prompt_tokens(inp, template, tools)
        if not tokens:
            raise InvalidRequest("the prompt has no tokens for this model (only control characters?)")
        sources = [s.chunk_id for s in retrieved.sources] if retrieved is not None else []
        grounding = self._grounded(inp, tools, retrieved)
        if grounding is not None and grounding.relevance < self.settings.grounding_min_relevance:
            abstain_now(grounding, sink, arrived, "below_threshold")
            return Queued(sources, len(tokens), grounding=grounding)
        scale = 1.0 if inp.adapter_scale is None else inp.adapter_scale
        if not math.isfinite(scale) or not 0.0 < scale <= 4.0:
            raise InvalidRequest(f"adapter_scale must be in (0, 4], got {scale}")
        use = self.engine.adapters.acquire(inp.adapter, scale) if inp.adapter else None
        if tools is not None and tools.parses:
            sink = ToolCallSink(tools.parser(request_id), sink)
        if grounding is not None:
            sink = GroundedSink(grounding, sink, self.settings.grounding_extractive)
        source = f"template:{template.spec.name}@{template.spec.version}" if template is not None else ""
        req = GenerationRequest(
            request_id, tokens, params, sink, adapter=use, arrived=arrived, prefix_len=prefix_len, prefix_source=source
        )
        try:
            self.engine.submit(req)
        except BaseException:
            self.engine.discard(req)
            raise
        return Queued(
            sources,
            len(tokens),
            template=f"{template.spec.name}@{template.spec.version}" if template is not None else "",
            adapter=f"{use.name}@{use.version}" if use is not None else "",
            grounding=grounding,
        )

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)

    # -- embeddings ----------------------------------------------------------------------
    def embed(self, texts: list[str], normalize: bool) -> tuple[Future[list[list[float]]], int]:
        """Queue the texts for embedding; returns the future vectors and the token count."""
        self.engine.check_alive()
        if self.draining:
            raise Draining("node is draining for shutdown")
        if not texts:
            raise InvalidRequest("texts is empty; give at least one text")
        if len(texts) > self.settings.max_embed_texts:
            raise InvalidRequest(f"at most {self.settings.max_embed_texts} texts per call, got {len(texts)}")
        tokens = []
        for i, t in enumerate(texts):
            if not t.strip():
                raise InvalidRequest(f"texts[{i}] is empty")
            ids = self.model.tokenize(t, add_special=True, parse_special=False)
            if not ids:
                raise InvalidRequest(f"texts[{i}] has no tokens for this model (only control characters?)")
            tokens.append(ids)
        return self.engine.embed(tokens, normalize), sum(len(t) for t in tokens)

    # -- status --------------------------------------------------------------------------
    def status(self) -> ServingState:
        th = self.thermal.state
        meta = self.model.meta
        state = (
            "failed"
            if self.engine.failure
            else "draining"
            if self.draining
            else "shedding"
            if th.shedding
            else "throttled"
            if th.throttled
            else "serving"
        )
        return ServingState(
            node_id=self.settings.node_id,
            profile=self.profile.name,
            model=self.model_file,
            model_meta={
                "architecture": meta.architecture,
                "quantization": meta.quantization,
                "n_params": meta.n_params,
                "n_ctx_train": meta.n_ctx_train,
                "has_chat_template": meta.chat_template is not None,
            },
            n_ctx=self.engine.config.n_ctx_slot,
            slots_total=self.engine.config.slots,
            slots_busy=self.engine.slots_busy,
            slots_available=self.engine.scheduler.slot_limit,
            queue_depth=self.engine.queue_depth,
            queue_limit=self.engine.config.queue_limit,
            thermal=th,
            memory_budget_bytes=self.memory["budget"],
            memory_estimate_bytes=self.memory["total"],
            rss_bytes=psutil.Process().memory_info().rss,
            status=state,
            versions=self.versions,
            kv_type=self.engine.kv_type,
        )

    def apply_thermal(self, state: ThermalState) -> None:
        """Called by the thermal poller: fewer slots while throttled, all of them otherwise."""
        slots = self.profile.thermal.throttle_slots if state.throttled else self.profile.context.slots
        if slots != self.engine.scheduler.slot_limit:
            self.engine.set_slot_limit(slots)
