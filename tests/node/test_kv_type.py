"""KV cache type per profile (context.kv_type, EDGEFLEET_KV_TYPE): validation, the memory estimate,
and a real node serving greedy requests with a q8_0 KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.node.engine.kv_type import kv_bytes_per_token
from edgefleet.node.errors import ProfileError
from edgefleet.node.profiles import MiB, estimate_memory_bytes, load_profile_file, with_kv_type
from edgefleet.node.settings import NodeSettings
from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import PROFILES, collect, write_profile

SMOLLM2_F16_KV_PER_TOKEN = 30 * 2 * (576 // 9) * 3 * 2  # layers x (K + V) x head width x kv heads x 2 B


def test_a_profile_takes_f16_or_q8_0_and_refuses_anything_else_naming_the_field(tmp_path: Path) -> None:
    assert load_profile_file(PROFILES / "x86-dev.toml").context.kv_type == "f16"
    assert load_profile_file(PROFILES / "rpi4-4gb.toml").context.kv_type == "q8_0"  # measured: bench/kv_type.py
    assert load_profile_file(write_profile(tmp_path / "q8.toml", kv_type="q8_0")).context.kv_type == "q8_0"
    with pytest.raises(ProfileError, match=r"context\.kv_type"):
        load_profile_file(write_profile(tmp_path / "q4.toml", kv_type="q4_0"))
    lines = (PROFILES / "x86-dev.toml").read_text().splitlines(True)
    without = "".join(line for line in lines if "kv_type" not in line)
    (tmp_path / "default.toml").write_text(without)
    assert load_profile_file(tmp_path / "default.toml").context.kv_type == "f16"  # the default


def test_the_environment_overrides_the_profile_and_empty_means_the_profiles(monkeypatch) -> None:
    monkeypatch.setenv("EDGEFLEET_KV_TYPE", "")
    assert NodeSettings().kv_type is None
    monkeypatch.setenv("EDGEFLEET_KV_TYPE", "q8_0")
    assert NodeSettings().kv_type == "q8_0"
    monkeypatch.setenv("EDGEFLEET_KV_TYPE", "q4_0")
    with pytest.raises(ValidationError, match="kv_type"):
        NodeSettings()
    profile = load_profile_file(PROFILES / "x86-dev.toml")
    assert with_kv_type(profile, None) is profile
    assert with_kv_type(profile, "q8_0").context.kv_type == "q8_0"


def test_the_memory_estimate_counts_34_bytes_per_32_values_for_q8_0() -> None:
    q8 = load_profile_file(PROFILES / "rpi4-4gb.toml")
    f16 = with_kv_type(q8, "f16")
    assert kv_bytes_per_token(SMOLLM2_F16_KV_PER_TOKEN, "q8_0") == 23040 * 34 // 64 == 12240
    cells = f16.context.n_ctx * f16.context.slots
    assert estimate_memory_bytes(f16, 1000, SMOLLM2_F16_KV_PER_TOKEN)["kv_cache"] == 23040 * cells
    est = estimate_memory_bytes(q8, 1000, SMOLLM2_F16_KV_PER_TOKEN)
    assert est["kv_cache"] == 12240 * cells
    assert est["total"] == 1000 + 12240 * cells + f16.memory.overhead_mb * MiB


def test_a_node_with_a_q8_0_kv_cache_answers_greedy_requests_and_says_so(start_node) -> None:
    node = start_node("x86-dev", env={"EDGEFLEET_KV_TYPE": "q8_0"})
    info = node.info()
    assert info.kv_type == "q8_0"
    ctx_cells = info.n_ctx * info.slots_total
    assert info.memory_estimate_bytes == info.model.file_size_bytes + 12240 * ctx_cells + 150 * MiB
    req = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="Sensor pump-3 reports vibration 7.1 mm/s. Fault?")],
        max_tokens=12,
        temperature=0,
    )
    first, last, _ = collect(node.stub.Generate(req))
    again, _, _ = collect(node.stub.Generate(req))
    assert first.strip() and first == again  # greedy is deterministic with a quantized cache too
    assert last.usage.completion_tokens >= 1
    assert "KV cache type not available" not in node.log()
