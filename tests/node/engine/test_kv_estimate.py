"""The node's own KV-cache estimate (node/engine/llama_backend.py `ModelMeta.kv_bytes_per_token`, what
its startup budget check uses) agrees with the orchestrator's (proto/model_gguf.py, what a model
manifest carries) on the real bundled files: Gemma 3's heads are 256 wide (key_length /
value_length), wider than n_embd/n_head (160), so an estimate from n_embd/n_head under-counts its cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.model_catalog import resolve_model
from edgefleet.proto.model_gguf import read_model


@pytest.mark.parametrize(
    ("name", "expected", "header_width"),
    [
        ("smollm2-135m-instruct", 23040, 0),  # no key_length in its header: n_embd/n_head = 576/9 = 64
        ("gemma-3-270m", 18432, 256),  # 18 layers x 1 KV head x (256 + 256) x 2 B; n_embd/n_head gives 11520
    ],
)
def test_the_node_counts_the_kv_cache_as_the_manifest_does(
    name: str, expected: int, header_width: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path: Path = resolve_model(name, tmp_path_factory.mktemp("models")).path
    meta = LoadedModel(path).meta
    assert (meta.key_length, meta.value_length) == (header_width, header_width)
    assert meta.kv_bytes_per_token() == read_model(path).kv_bytes_per_token == expected
