"""gRPC servicer of edgefleet.v1.Inference: translates protobuf to node services and back."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from edgefleet.node.api import citations, knowledge_rpc, response_cache
from edgefleet.node.api.event_channel import EventChannel
from edgefleet.node.api.status import refuse
from edgefleet.node.engine.types import Event, EventSink, Failed, Finished, FinishReason, TextDelta, ToolCallDelta
from edgefleet.node.errors import EdgefleetError, InvalidRequest
from edgefleet.node.knowledge.caches import CachedResponse
from edgefleet.node.service import NodeService
from edgefleet.node.service_types import ChatTurn, GenerateInput, Queued
from edgefleet.node.tool_calls.types import ToolCall, ToolChoice, ToolDef
from edgefleet.plumbing.grpc_malformed import refuse_malformed
from edgefleet.plumbing.logs import request_id_var
from edgefleet.proto.input_limits import JsonLimitError, loads_bounded
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("edgefleet.node.grpc")

REQUEST_ID_KEY = "x-request-id"
# Sent in Generate's initial metadata once the request is queued: the prompt tokens the node reads
# before the first token, so a client can show that the prompt is being read (the CLI's `ask` does).
PROMPT_TOKENS_KEY = "x-edgefleet-prompt-tokens"
MAX_REQUEST_ID = 128
_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
MAX_PARAMETERS_BYTES = 64 * 1024


async def _request_id(context: grpc.aio.ServicerContext, send: bool = True) -> str:
    """The caller's x-request-id (or a new one), echoed in the initial metadata and set for logs."""
    rid = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            rid = value.strip()[:MAX_REQUEST_ID]
    rid = rid or uuid.uuid4().hex
    request_id_var.set(rid)
    if send:
        await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
    return rid


def _tool(i: int, t: pb.Tool) -> ToolDef:
    parameters = {}
    if t.parameters_json.strip():
        field = f"tools[{i}].function.parameters"
        try:
            parameters = loads_bounded(t.parameters_json, field, MAX_PARAMETERS_BYTES)
        except JsonLimitError as e:
            raise InvalidRequest(str(e)) from e
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"{field} must be a JSON object schema")
    return ToolDef(t.name, t.description, parameters)


def _tool_choice(req: pb.GenerateRequest) -> ToolChoice | None:
    if not req.HasField("tool_choice"):
        return None
    c = req.tool_choice
    return ToolChoice(c.mode or ("function" if c.function else "auto"), c.function)


def _turn(m: pb.ChatMessage) -> ChatTurn:
    calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls)
    return ChatTurn(m.role, m.content, tool_calls=calls, tool_call_id=m.tool_call_id, name=m.name)


def _to_input(req: pb.GenerateRequest) -> GenerateInput:
    """The request as the service takes it; InvalidRequest for a tool whose parameters are not a JSON object."""
    return GenerateInput(
        prompt=req.prompt,
        messages=tuple(_turn(m) for m in req.messages),
        max_tokens=req.max_tokens if req.HasField("max_tokens") else None,
        temperature=req.temperature if req.HasField("temperature") else None,
        top_p=req.top_p if req.HasField("top_p") else None,
        top_k=req.top_k if req.HasField("top_k") else None,
        seed=req.seed if req.HasField("seed") else None,
        stop=tuple(req.stop),
        json_schema=req.json_schema,
        adapter=req.adapter,
        adapter_scale=req.adapter_scale if req.HasField("adapter_scale") else None,
        template=req.template,
        variables=dict(req.variables),
        collection=req.retrieval.collection,
        retrieval_top_k=req.retrieval.top_k,
        tools=tuple(_tool(i, t) for i, t in enumerate(req.tools)),
        tool_choice=_tool_choice(req),
        parallel_tool_calls=req.parallel_tool_calls if req.HasField("parallel_tool_calls") else True,
        tools_unconstrained=req.tools_unconstrained,
    )


def _merged(deltas: list[ToolCallDelta]) -> list[pb.ToolCallDelta]:
    """A batch's call fragments, those of one call in a row joined (id and name from its opening one)."""
    out: list[pb.ToolCallDelta] = []
    for d in deltas:
        if out and out[-1].index == d.index:
            out[-1].arguments += d.arguments
            out[-1].id = out[-1].id or d.id
            out[-1].name = out[-1].name or d.name
        else:
            out.append(pb.ToolCallDelta(index=d.index, id=d.id, name=d.name, arguments=d.arguments))
    return out


def _joined(batch: list[Event]) -> tuple[str, list[pb.ToolCallDelta]]:
    """A batch's text and its tool-call fragments, merged (most batches: text alone)."""
    parts = [e.text for e in batch if isinstance(e, TextDelta)]
    if len(parts) == len(batch):
        return "".join(parts), []
    return "".join(parts), _merged([e for e in batch if isinstance(e, ToolCallDelta)])


def _whole_calls(deltas: list[pb.ToolCallDelta]) -> list[dict[str, str]]:
    """The complete calls of an answer from its fragments (for the response cache)."""
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        c = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
        c["id"] = c["id"] or d.id
        c["name"] = c["name"] or d.name
        c["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


T = TypeVar("T")
Q = TypeVar("Q")
R = TypeVar("R")
UnaryMethod = Callable[[Any, Q, grpc.aio.ServicerContext], Awaitable[R]]


def _unary(fn: UnaryMethod[Q, R]) -> UnaryMethod[Q, R]:
    """A unary RPC: request id for the logs, typed errors mapped to their status once."""

    async def call(self: Any, request: Q, context: grpc.aio.ServicerContext) -> R:
        await refuse_malformed(request, context)
        await _request_id(context)
        try:
            return await fn(self, request, context)
        except EdgefleetError as e:
            await refuse(context, e)

    return call


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, service: NodeService) -> None:
        self.service = service
        # CPU work of a new request (chat rendering, tokenizing, grammar compilation, response-cache
        # reads) runs here, never on the event loop that streams the other requests' tokens.
        self._admission = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgefleet-admit")

    def close(self) -> None:
        self._admission.shutdown(wait=False, cancel_futures=True)

    def _admit(
        self, request: pb.GenerateRequest, inp: GenerateInput, rid: str, sink: EventSink, arrived: float
    ) -> tuple[CachedResponse | None, str | None, Queued | None]:
        """On an admission thread: a response-cache hit, or the request queued on the engine."""
        request_id_var.set(rid)
        cache_key = None
        if response_cache.cacheable(self.service, request):
            cache_key = response_cache.key_for(self.service, request, inp)
        knowledge = self.service.knowledge
        hit = knowledge.cached(cache_key) if cache_key and knowledge else None
        if hit is not None:
            return hit, cache_key, None
        return None, cache_key, self.service.generate_queued(inp, rid, sink, arrived)

    async def _off_loop(self, rid: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on an admission thread; if the client goes away meanwhile, cancel what it queued."""
        fut = self._admission.submit(fn, *args)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            if rid:
                fut.add_done_callback(lambda _: self.service.cancel(rid))
            raise

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        arrived = time.monotonic()
        await refuse_malformed(request, context)
        rid = await _request_id(context, send=False)  # sent with the prompt size once queued
        channel = EventChannel(asyncio.get_running_loop(), self.service.settings.stream_interval_ms / 1000.0)
        try:
            inp = _to_input(request)
            hit, cache_key, queued = await self._off_loop(rid, self._admit, request, inp, rid, channel.put, arrived)
        except EdgefleetError as e:
            await refuse(context, e)
            return
        prompt_tokens = str(queued.prompt_tokens) if queued is not None else "0"
        sources = queued.sources if queued is not None else []
        if hit is not None:
            await context.send_initial_metadata(((REQUEST_ID_KEY, rid), (PROMPT_TOKENS_KEY, prompt_tokens)))
            log.info("answered from the response cache")
            cached = response_cache.chunk(hit, rid, (time.monotonic() - arrived) * 1000)
            cached.node_id = self.service.settings.node_id
            yield cached
            return
        texts: list[str] = []
        calls: list[pb.ToolCallDelta] = []
        finished = False
        try:
            await context.send_initial_metadata(((REQUEST_ID_KEY, rid), (PROMPT_TOKENS_KEY, prompt_tokens)))
            while True:
                batch = await channel.next_batch()
                text, deltas = _joined(batch)
                event = batch[-1]
                if cache_key:  # the whole answer is kept for the response cache
                    texts.append(text)
                    calls.extend(deltas)
                if isinstance(event, TextDelta | ToolCallDelta):
                    yield pb.GenerateChunk(text=text, request_id=rid, tool_calls=deltas)
                elif isinstance(event, Finished):
                    finished = True
                    u = event.usage
                    log.info(
                        "generated",
                        extra={
                            "finish": event.reason.value,
                            "prompt_tokens": u.prompt_tokens,
                            "completion_tokens": u.completion_tokens,
                            "ttft_ms": round(u.time_to_first_token_ms, 1),
                            "tokens_per_second": round(u.tokens_per_second, 1),
                            "cached": u.cached_prompt_tokens,
                        },
                    )
                    final = pb.GenerateChunk(
                        text=text + event.text_tail,
                        tool_calls=deltas,
                        request_id=rid,
                        node_id=self.service.settings.node_id,
                        finish_reason=_FINISH[event.reason],
                        source_chunk_ids=sources,
                        usage=pb.Usage(
                            prompt_tokens=u.prompt_tokens,
                            completion_tokens=u.completion_tokens,
                            time_to_first_token_ms=u.time_to_first_token_ms,
                            tokens_per_second=u.tokens_per_second,
                            total_ms=u.total_ms,
                            queue_ms=u.queue_ms,
                            cached_prompt_tokens=u.cached_prompt_tokens,
                        ),
                    )
                    citations.fill(final, queued.grounding if queued is not None else None)
                    if cache_key and self.service.knowledge and event.reason != FinishReason.CANCELLED:
                        whole = "".join(texts) + event.text_tail
                        await asyncio.to_thread(
                            response_cache.remember, self.service, cache_key, whole, final, inp, _whole_calls(calls)
                        )
                    yield final
                    return
                elif isinstance(event, Failed):
                    finished = True
                    if text or deltas:
                        yield pb.GenerateChunk(text=text, request_id=rid, tool_calls=deltas)
                    await refuse(context, event.error)
                    return
        finally:
            if not finished:  # client cancelled, deadline passed, or the stream broke
                log.info("generation cancelled by the client")
                self.service.cancel(rid)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        await refuse_malformed(request, context)
        await _request_id(context)
        texts = list(request.texts)
        try:  # tokenizing is CPU work: not on the event loop
            fut, n_tokens = await self._off_loop("", self.service.embed, texts, request.normalize)
        except EdgefleetError as e:
            await refuse(context, e)
        try:
            vectors = await asyncio.wrap_future(fut)
        except EdgefleetError as e:
            await refuse(context, e)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in vectors],
            dimensions=len(vectors[0]) if vectors else 0,
            model=self.service.model_file.name,
            prompt_tokens=n_tokens,
        )

    @_unary
    async def Ingest(self, request: pb.IngestRequest, context: grpc.aio.ServicerContext) -> pb.IngestResponse:
        return await knowledge_rpc.ingest(knowledge_rpc.need(self.service.knowledge), request)

    @_unary
    async def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentsResponse:
        return await knowledge_rpc.delete(knowledge_rpc.need(self.service.knowledge), request)

    @_unary
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        return await knowledge_rpc.collections(knowledge_rpc.need(self.service.knowledge))

    @_unary
    async def Retrieve(self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext) -> pb.RetrieveResponse:
        return await knowledge_rpc.retrieve(knowledge_rpc.need(self.service.knowledge), request)

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest, context: grpc.aio.ServicerContext) -> pb.NodeInfo:
        await refuse_malformed(request, context)
        await _request_id(context)
        s = self.service.status()
        m = s.model_meta
        from edgefleet.node.errors import disk_space

        free, total = disk_space(self.service.settings.data_dir)
        return pb.NodeInfo(
            node_id=s.node_id,
            profile=s.profile,
            model=pb.ModelInfo(
                name=s.model.name,
                path=str(s.model.path),
                architecture=str(m["architecture"]),
                quantization=str(m["quantization"]),
                file_size_bytes=s.model.size,
                sha256=s.model.sha256,
                n_params=int(str(m["n_params"])),
                n_ctx_train=int(str(m["n_ctx_train"])),
                has_chat_template=bool(m["has_chat_template"]),
            ),
            n_ctx=s.n_ctx,
            slots_total=s.slots_total,
            slots_busy=s.slots_busy,
            slots_available=s.slots_available,
            queue_depth=s.queue_depth,
            queue_limit=s.queue_limit,
            adapters=[
                pb.AdapterInfo(name=a.name, version=a.version, sha256=a.sha256, size_bytes=a.size)
                for a in self.service.engine.adapters.listing()
            ],
            versions=pb.Versions(**s.versions),
            thermal=pb.ThermalState(
                available=s.thermal.available,
                temperature_c=s.thermal.temperature_c,
                throttled=s.thermal.throttled,
                shedding=s.thermal.shedding,
            ),
            memory_budget_bytes=s.memory_budget_bytes,
            memory_estimate_bytes=s.memory_estimate_bytes,
            rss_bytes=s.rss_bytes,
            status=s.status,
            search_backend=self.service.knowledge.search_backend if self.service.knowledge else "",
            embedder=self.service.knowledge.embedder if self.service.knowledge else "",
            disk_free_bytes=free,
            disk_total_bytes=total,
            disk_low=total > 0 and free < self.service.settings.disk_warn_mb * 1024 * 1024,
            kv_type=s.kv_type,
        )
