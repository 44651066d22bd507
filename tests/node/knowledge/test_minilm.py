"""The minilm embedder: all-MiniLM-L6-v2 from its wheel, written once as GGUF, run by llama.cpp.

The conversion is checked against the model itself: a plain numpy BERT forward pass over the
wheel's safetensors (the reference sentence-transformers computes: WordPiece, 6 layers, mean
pooling) must give the vectors llama.cpp gives from the GGUF file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from edgefleet.node.knowledge.bert_gguf import minilm_gguf, minilm_source_dir
from edgefleet.node.knowledge.embedders import MiniLMEmbedder, embedder_for_identity

SENTENCES = ["The glycol pump is leaking at the shaft seal.", "How do I rotate the journal files every week?"]


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def reference(text: str) -> np.ndarray:
    """sentence-transformers' all-MiniLM-L6-v2 vector of `text`, in numpy, unnormalised."""
    model_dir = minilm_source_dir()
    cfg = json.loads((model_dir / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; sentence-transformers masks the padding out
    ids = tokenizer.encode(text).ids
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = _layer_norm(x + w["embeddings.token_type_embeddings.weight"][0], *_ln(w, "embeddings.LayerNorm"), eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (_dense(w, x, f"{p}attention.self.{n}") for n in ("query", "key", "value"))
        split = lambda t: t.reshape(len(ids), heads, -1).transpose(1, 0, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(q.shape[1] // heads)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = ((att / att.sum(-1, keepdims=True)) @ split(v)).transpose(1, 0, 2).reshape(len(ids), -1)
        x = _layer_norm(
            x + _dense(w, ctx, f"{p}attention.output.dense"), *_ln(w, f"{p}attention.output.LayerNorm"), eps
        )
        h = _dense(w, _gelu(_dense(w, x, f"{p}intermediate.dense")), f"{p}output.dense")
        x = _layer_norm(x + h, *_ln(w, f"{p}output.LayerNorm"), eps)
    return x.mean(0)


def _dense(w: dict[str, np.ndarray], x: np.ndarray, name: str) -> np.ndarray:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _ln(w: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    return w[f"{name}.weight"], w[f"{name}.bias"]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> MiniLMEmbedder:
    return MiniLMEmbedder(tmp_path_factory.mktemp("embedders"))


def test_gguf_vectors_match_the_model_computed_in_numpy(minilm: MiniLMEmbedder) -> None:
    rows = minilm.embed(SENTENCES)
    assert rows.shape == (2, 384) and np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    for text, row in zip(SENTENCES, rows, strict=True):
        ref = reference(text)
        assert float(row @ (ref / np.linalg.norm(ref))) > 0.999, text


def test_gguf_is_written_once_and_the_identity_names_it(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    minilm.embed(["warm up"])
    (written,) = minilm._cache_dir.glob("*.gguf")
    assert minilm_gguf(minilm._cache_dir) == written  # found, not converted again
    assert minilm.identity == f"minilm:{written.stem}:mean"
    assert not list(minilm._cache_dir.glob(".*.tmp"))
    again = embedder_for_identity(minilm.identity, cache_dir=tmp_path)
    assert isinstance(again, MiniLMEmbedder) and again.identity == minilm.identity
    assert embedder_for_identity("minilm:all-minilm-l6-v2-9.9-c1-f16:mean", cache_dir=tmp_path) is None


def test_a_paraphrase_is_nearer_than_another_topic(minilm: MiniLMEmbedder) -> None:
    a, b, c = minilm.embed(
        ["The pump shows a high pressure alarm", "How do I clear the overpressure fault on the pump?", "Bananas"]
    )
    assert a @ b > a @ c + 0.3
