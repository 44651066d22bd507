"""LoRA adapters in the engine: per-request hot-swap, batching across adapter groups, refusals."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.v1 import inference_pb2 as pb
from tests import site_identity
from tests.conftest import BIN, NodeProcess, collect
from tools.make_lora import write_lora

PROMPTS = ["Is 7 mm/s vibration bad?", "Name a cause of pump cavitation.", "What is a bearing?", "Define RMS."]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_model(None, tmp_path_factory.mktemp("models")).path


@pytest.fixture(scope="module")
def lora(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lora(base_model, tmp_path_factory.mktemp("lora") / "alarm.gguf", rank=16, seed=1)


@pytest.fixture(scope="module")
def adapter_node(lora: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("adapter-node"), env={"EDGEFLEET_ADAPTERS": f"alarm={lora}"})
    try:
        n.wait_serving()
        yield n
    finally:
        n.stop()


def ask(node: NodeProcess, prompt: str, adapter: str = "", scale: float | None = None) -> str:
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)], max_tokens=20, temperature=0, adapter=adapter
    )
    if scale is not None:
        req.adapter_scale = scale
    return collect(node.stub.Generate(req, timeout=60))[0]


def test_adapter_is_listed_with_version_sha256_and_size(adapter_node: NodeProcess, lora: Path) -> None:
    (a,) = adapter_node.info().adapters
    assert (a.name, a.version) == ("alarm", "local")
    assert a.sha256 == hashlib.sha256(lora.read_bytes()).hexdigest() and a.size_bytes == lora.stat().st_size
    assert a.size_bytes >= 1_500_000


def test_adapter_changes_greedy_output_per_request_and_base_stays_base(adapter_node: NodeProcess) -> None:
    base = ask(adapter_node, PROMPTS[0])
    tuned = ask(adapter_node, PROMPTS[0], "alarm")
    assert tuned != base
    assert ask(adapter_node, PROMPTS[0]) == base, "the next request without adapter gets the base model"
    assert ask(adapter_node, PROMPTS[0], "alarm") == tuned
    assert ask(adapter_node, PROMPTS[0], "alarm", scale=0.25) not in (tuned,)


def test_mixed_adapter_batch_equals_solo_outputs(adapter_node: NodeProcess) -> None:
    jobs = [(PROMPTS[0], "alarm"), (PROMPTS[1], ""), (PROMPTS[2], "alarm"), (PROMPTS[3], "")]
    solo = [ask(adapter_node, p, a) for p, a in jobs]
    out: dict[int, str] = {}
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        out[i] = ask(adapter_node, *jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [out[i] for i in range(len(jobs))] == solo


def test_bad_adapter_scale_is_invalid_argument(adapter_node: NodeProcess) -> None:
    with pytest.raises(grpc.RpcError) as err:
        ask(adapter_node, "hi", "alarm", scale=-1.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "adapter_scale" in err.value.details()


def _serve_with(adapters: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgefleet-node"), "serve", "--port", "0", "--data-dir", str(tmp / "d"), "--log-format", "text"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"EDGEFLEET_ADAPTERS": adapters, "PATH": "/usr/bin:/bin", **site_identity.site().node_env("vm")},
    )


def test_adapter_for_another_architecture_or_truncated_is_refused(base_model: Path, lora: Path, tmp_path: Path) -> None:
    other = write_lora(base_model, tmp_path / "gemma.gguf", architecture="gemma3")
    r = _serve_with(f"x={other}", tmp_path)
    assert r.returncode == 2 and "architecture 'gemma3'" in r.stderr
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(lora.read_bytes()[: lora.stat().st_size // 2])
    r = _serve_with(f"x={cut}", tmp_path)
    assert r.returncode == 2 and "truncated" in r.stderr
