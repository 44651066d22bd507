"""The node's Prometheus endpoint: scraped over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import collect, free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_metrics_count_requests_tokens_latency_and_cache_hits(start_node) -> None:
    port = free_port()
    node = start_node(env={"EDGEFLEET_METRICS_PORT": str(port)})
    prompt = pb.GenerateRequest(prompt="The pump log says: vibration high. " * 8, max_tokens=6, temperature=0)
    for _ in range(2):  # the second one reuses the first one's prompt KV
        _, last, _ = collect(node.stub.Generate(prompt, timeout=30))
    assert last.usage.cached_prompt_tokens > 0
    with pytest.raises(grpc.RpcError):
        list(node.stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=0), timeout=10))
    node.info()
    m = scrape(port)
    assert m[("edgefleet_node_requests_total", (("code", "OK"), ("method", "Generate")))] == 2
    assert m[("edgefleet_node_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Generate")))] == 1
    assert m[("edgefleet_node_requests_total", (("code", "OK"), ("method", "GetNodeInfo")))] >= 1
    assert m[("edgefleet_node_time_to_first_token_seconds_count", ())] == 2
    assert m[("edgefleet_node_inter_token_latency_seconds_count", ())] == 2 * 5, "a gap between each of 6 tokens"
    assert m[("edgefleet_node_completion_tokens_total", ())] == 12
    assert m[("edgefleet_node_prompt_tokens_total", ())] == 2 * last.usage.prompt_tokens
    assert m[("edgefleet_node_prefix_cache_hits_total", ())] == 1
    assert m[("edgefleet_node_prefix_cache_tokens_total", ())] == last.usage.cached_prompt_tokens
    assert m[("edgefleet_node_generations_total", (("reason", "length"),))] == 2
    assert m[("edgefleet_node_slots_total", ())] == 4
    assert m[("edgefleet_node_slots_busy", ())] == 0
    assert m[("edgefleet_node_compute_threads", ())] == 1
    assert m[("edgefleet_node_engine_failed", ())] == 0
    assert m[("edgefleet_node_request_duration_seconds_count", (("method", "Generate"),))] == 3
    drafted = m[("edgefleet_node_speculative_draft_tokens_total", ())]  # 0 unless EDGEFLEET_SPECULATION
    assert 0 <= m[("edgefleet_node_speculative_accepted_tokens_total", ())] <= drafted
    assert 0 <= m[("edgefleet_node_speculative_acceptance", ())] <= 1
