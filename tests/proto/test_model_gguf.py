"""The base-model GGUF contract on the bundled model files: what the header says, and what is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.artifacts import build_manifest
from edgefleet.proto.model_gguf import ModelFileError, read_model
from tools.make_lora import write_lora


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_model(None, tmp_path_factory.mktemp("models")).path  # the default: smollm2-135m-instruct


def test_the_default_model_states_its_architecture_and_kv_bytes_per_token(smollm2: Path) -> None:
    h = read_model(smollm2)
    # SmolLM2-135M: llama, 30 layers, 576 wide, 9 query heads of 64, 3 KV heads
    assert (h.architecture, h.n_layer, h.n_embd, h.n_head, h.n_head_kv) == ("llama", 30, 576, 9, 3)
    assert h.key_length == h.value_length == 576 // 9
    # the contract's formula: n_layer * 2 (K and V) * head size * KV heads * 2 bytes (f16)
    assert h.kv_bytes_per_token == 30 * 2 * (576 // 9) * 3 * 2 == 23040


def test_a_model_whose_heads_are_wider_than_its_embedding_share_counts_its_key_and_value_length(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    gemma = resolve_model("gemma-3-270m", tmp_path_factory.mktemp("gemma")).path
    h = read_model(gemma)
    # Gemma 3 270M: 18 layers, 640 wide, 4 query heads of 256 (not 640/4), 1 KV head: llama.cpp's cache
    # holds key_length + value_length values per KV head and layer
    assert (h.architecture, h.n_layer, h.n_embd, h.n_head, h.n_head_kv) == ("gemma3", 18, 640, 4, 1)
    assert (h.key_length, h.value_length) == (256, 256)
    assert h.kv_bytes_per_token == 18 * 1 * (256 + 256) * 2 == 18432


def test_a_lora_adapter_is_refused_as_a_model(smollm2: Path, tmp_path: Path) -> None:
    lora = write_lora(smollm2, tmp_path / "fix.gguf", rank=4)
    with pytest.raises(ModelFileError, match=r"is a LoRA adapter .*not a base model.*push-adapter"):
        read_model(lora)


def test_a_file_that_is_no_gguf_or_a_cut_one_is_refused(smollm2: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "notes.gguf"
    garbage.write_bytes(b"this is not a model\n" * 100)
    with pytest.raises(ModelFileError, match=r"notes\.gguf is not a readable GGUF file"):
        read_model(garbage)
    cut = tmp_path / "cut.gguf"
    with smollm2.open("rb") as f:
        cut.write_bytes(f.read(64 * 1024))  # a part of the header (the vocabulary runs on)
    with pytest.raises(ModelFileError, match=r"cut\.gguf ends inside its GGUF header"):
        read_model(cut)
    cut.write_bytes(smollm2.read_bytes()[:-1000])  # the header whole, the last tensor cut short
    with pytest.raises(ModelFileError, match=r"cut\.gguf is \d+ bytes but its tensors need \d+: the file is cut short"):
        read_model(cut)


def test_a_model_manifest_is_built_chunk_by_chunk_with_the_whole_files_hashes(smollm2: Path) -> None:
    chunk = 4 * 1024 * 1024
    h = read_model(smollm2)
    m = build_manifest(
        smollm2,
        "model",
        "tiny",
        "1.0",
        chunk_bytes=chunk,
        model_architecture=h.architecture,
        kv_bytes_per_token=h.kv_bytes_per_token,
    )
    data = smollm2.read_bytes()
    assert m.size == len(data) and m.sha256 == hashlib.sha256(data).hexdigest()
    assert m.chunk_sha256 == [hashlib.sha256(data[i : i + chunk]).hexdigest() for i in range(0, len(data), chunk)]
    assert (m.kind, m.model_architecture, m.kv_bytes_per_token) == ("model", "llama", 23040)
