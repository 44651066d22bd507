"""GetNodeInfo, Embed, health and reflection on a real node."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import NodeProcess


def test_node_info_names_model_quantization_size_and_sha256(node: NodeProcess) -> None:
    info = node.info()
    assert info.node_id == f"test-{node.port}"
    assert info.profile == "x86-dev"
    m = info.model
    assert m.name == "smollm2-135m-instruct"
    assert m.quantization == "Q4_1"
    assert m.architecture == "llama"
    path = Path(m.path)
    assert m.file_size_bytes == path.stat().st_size
    assert m.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.n_ctx == 2048 and info.slots_total == 4 and info.queue_limit == 16
    assert info.versions.llama_cpp_python == "0.3.36"
    assert info.memory_estimate_bytes < info.memory_budget_bytes
    assert info.status == "serving"


def test_health_is_serving(node: NodeProcess) -> None:
    health = health_pb2_grpc.HealthStub(node.channel)
    for service in ("", "edgefleet.v1.Inference"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_inference_service(node: NodeProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(node.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "edgefleet.v1.Inference" in names
    assert "grpc.health.v1.Health" in names


def test_embed_returns_one_vector_per_text(stub) -> None:
    resp = stub.Embed(pb.EmbedRequest(texts=["bearing fault", "bearing failure", "blue sky"], normalize=True))
    assert resp.dimensions == 576 and len(resp.embeddings) == 3
    vecs = [list(e.values) for e in resp.embeddings]
    for v in vecs:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    assert resp.prompt_tokens >= 6
