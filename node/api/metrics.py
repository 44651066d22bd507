"""The node's Prometheus metrics: off by default (`--metrics-port` / EDGEFLEET_METRICS_PORT turns them on).

Counted where things happen: requests by method and status (a gRPC interceptor, installed only
when metrics are on, so a device without them pays nothing), time to first token, inter-token
latency, tokens, prefix-cache hits and speculative drafts (the engine's observer). Read at scrape time: slots, queue,
thermal state, compute threads, sensor inbox/outbox and artifact transfers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.node.engine.types import FinishReason, Usage
from edgefleet.node.runtime import Node

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)


class NodeMetrics:
    """Every metric of one node, in its own registry (never the process-global one)."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgefleet_node_requests", "gRPC requests by method and status code", ["method", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "edgefleet_node_request_duration_seconds",
            "Time from request to its last response message",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "edgefleet_node_time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "edgefleet_node_inter_token_latency_seconds",
            "Time between two tokens of one generation",
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("edgefleet_node_prompt_tokens", "Prompt tokens read", registry=r)
        self.completion_tokens = Counter("edgefleet_node_completion_tokens", "Tokens generated", registry=r)
        self.cached_tokens = Counter(
            "edgefleet_node_prefix_cache_tokens", "Prompt tokens reused from a slot's KV cache", registry=r
        )
        self.prefix_hits = Counter(
            "edgefleet_node_prefix_cache_hits", "Generations that reused a cached prompt prefix", registry=r
        )
        self.finished_by = Counter(
            "edgefleet_node_generations", "Finished generations by finish reason", ["reason"], registry=r
        )
        self.drafted_tokens = Counter(
            "edgefleet_node_speculative_draft_tokens",
            "Prompt-lookup draft tokens verified (draftless speculation)",
            registry=r,
        )
        self.accepted_tokens = Counter(
            "edgefleet_node_speculative_accepted_tokens",
            "Draft tokens the sampler confirmed; accepted / draft is the acceptance rate",
            registry=r,
        )
        r.register(_NodeState(node))

    # -- EngineObserver (engine thread) ---------------------------------------------------------
    def token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def finished(self, reason: FinishReason, usage: Usage) -> None:
        self.finished_by.labels(reason.value).inc()
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        if usage.time_to_first_token_ms > 0:
            self.ttft.observe(usage.time_to_first_token_ms / 1000.0)
        if usage.cached_prompt_tokens > 0:
            self.prefix_hits.inc()
            self.cached_tokens.inc(usage.cached_prompt_tokens)

    def speculated(self, drafted: int, accepted: int) -> None:
        self.drafted_tokens.inc(drafted)
        self.accepted_tokens.inc(accepted)

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics over HTTP on a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)


class _NodeState(Collector):
    """Gauges read from the node at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        service, engine = self.node.service, self.node.engine
        s = service.status()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("edgefleet_node_slots_total", "Slots (concurrent generations) of the profile", s.slots_total)
        yield gauge("edgefleet_node_slots_busy", "Slots generating now", s.slots_busy)
        yield gauge("edgefleet_node_slots_available", "Slots usable now (fewer while throttled)", s.slots_available)
        yield gauge("edgefleet_node_queue_depth", "Requests waiting for a slot", s.queue_depth)
        yield gauge("edgefleet_node_throttled", "1 while hot enough to use fewer slots", float(s.thermal.throttled))
        yield gauge("edgefleet_node_shedding", "1 while too hot to take requests", float(s.thermal.shedding))
        if s.thermal.available:
            yield gauge("edgefleet_node_temperature_celsius", "SoC temperature", s.thermal.temperature_c)
        threads = engine.governor.current if engine.governor is not None else engine.config.threads
        yield gauge("edgefleet_node_compute_threads", "llama.cpp compute threads in use", threads)
        yield gauge("edgefleet_node_rss_bytes", "Resident memory of the node process", s.rss_bytes)
        drafted = engine.drafted_tokens
        yield gauge(
            "edgefleet_node_speculative_acceptance",
            "Draft tokens confirmed / verified since the start (0 before any draft)",
            engine.accepted_tokens / drafted if drafted else 0.0,
        )
        yield gauge("edgefleet_node_engine_failed", "1 once the engine has failed", float(bool(engine.failure)))
        agent = self.node.agent
        sensors = agent.sensors if agent is not None else None
        if sensors is not None:
            depths = sensors.telemetry()
            inbox, outbox = depths["inbox_depth"], depths["outbox_depth"]
            assert isinstance(inbox, int) and isinstance(outbox, int)
            yield gauge("edgefleet_node_sensor_inbox_depth", "Sensor messages kept, not yet answered", inbox)
            yield gauge("edgefleet_node_sensor_outbox_depth", "Answers not yet confirmed by the broker", outbox)
        transfers = GaugeMetricFamily(
            "edgefleet_node_artifact_transfers", "Artifact transfers by kind and state", labels=["kind", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        for sync in (agent.adapters, agent.knowledge) if agent is not None else ():
            if sync is None:
                continue
            _, progress = sync.report()
            for key, p in progress.items():
                kind = key.split("/", 1)[0]
                counts[(kind, p.state)] = counts.get((kind, p.state), 0) + 1
        for (kind, state), n in sorted(counts.items()):
            transfers.add_metric([kind, state], n)
        yield transfers


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by method and final status code."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        m = self.metrics

        def record(context: grpc.aio.ServicerContext, started: float, error: BaseException | None) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.CANCELLED if error is not None else grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            m.requests.labels(method, name).inc()
            m.request_seconds.labels(method).observe(time.perf_counter() - started)

        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, error = time.perf_counter(), None
                try:
                    return await inner_unary(request, context)
                except BaseException as e:
                    error = e
                    raise
                finally:
                    record(context, started, error)

            return handler._replace(unary_unary=unary)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, error = time.perf_counter(), None
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as e:
                    error = e
                    raise
                finally:
                    record(context, started, error)

            return handler._replace(unary_stream=stream)
        return handler
