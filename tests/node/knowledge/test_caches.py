"""Retrieval and response caches: LRU bounds, restarts, invalidation, damaged files, use by the store."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from edgefleet.node.knowledge import (
    Document,
    InvalidInput,
    KnowledgeStore,
    ResponseCache,
    RetrievalCache,
    WordLlamaEmbedder,
    response_cache_key,
)
from edgefleet.node.knowledge.caches import default_cache_path
from edgefleet.node.knowledge.search import RANKING_VERSION

from .conftest import DOCS


def test_response_cache_key_is_canonical() -> None:
    a = response_cache_key(model_sha256="ab", adapter_version="1", request={"prompt": "x", "max_tokens": 5})
    b = response_cache_key(request={"max_tokens": 5, "prompt": "x"}, adapter_version="1", model_sha256="ab")
    assert a == b and len(a) == 64
    assert a != response_cache_key(model_sha256="ab", adapter_version="2", request={"prompt": "x", "max_tokens": 5})
    assert a != response_cache_key(model_sha256="ab", adapter_version="1", request={"prompt": "x", "max_tokens": 6})
    with pytest.raises(InvalidInput):
        response_cache_key(request=object())
    with pytest.raises(InvalidInput):
        response_cache_key(score=float("nan"))


def test_response_cache_lru_eviction(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite", max_rows=3)
    for key in "abc":
        cache.put(key, f"answer {key}", {"tokens": 3})
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", "answer d")
    assert len(cache) == 3
    assert cache.get("b") is None  # the least recently used went
    assert cache.get("a") == cache.get("a")
    hit = cache.get("a")
    assert hit is not None and hit.text == "answer a" and hit.metadata == {"tokens": 3}
    assert cache.get("c") is not None and cache.get("d") is not None


def test_response_cache_survives_reopen_and_invalidates_by_collection(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    cache.put("k1", "uses manual", collection="manual")
    cache.put("k2", "uses faq", collection="faq")
    cache.put("k3", "no collection")
    cache.close()
    cache = ResponseCache(path)
    assert cache.get("k1") is not None and len(cache) == 3
    assert cache.invalidate_collection("manual") == 1
    assert cache.get("k1") is None
    assert cache.get("k2") is not None and cache.get("k3") is not None


def test_response_cache_hit_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ResponseCache(tmp_path / "cache.sqlite", max_rows=1000)
    for i in range(1000):
        cache.put(f"key{i}", f"answer number {i} " * 20, {"i": str(i)})
    times = []
    for i in range(0, 1000, 5):
        t0 = time.perf_counter()
        assert cache.get(f"key{i}") is not None
        times.append((time.perf_counter() - t0) * 1000)
    with capsys.disabled():
        print(
            f"\n[response cache] get hit over 1000 rows: median {statistics.median(times):.3f} ms, "
            f"max {max(times):.3f} ms ({len(times)} gets)"
        )


def test_retrieval_cache_keys_and_lru(tmp_path: Path) -> None:
    cache = RetrievalCache(tmp_path / "cache.sqlite", max_rows=2)
    hits = [("manual/pump#0", 0.5), ("manual/pump#1", 0.25)]
    cache.put("manual", "v1#r1", "wordllama:l2_supercat:256", "seal", 5, "hybrid", hits)
    assert cache.get("manual", "v1#r1", "wordllama:l2_supercat:256", "seal", 5, "hybrid") == hits
    for changed in [
        ("manual", "v1#r2", "wordllama:l2_supercat:256", "seal", 5, "hybrid"),
        ("manual", "v1#r1", "llama:abc:mean", "seal", 5, "hybrid"),
        ("manual", "v1#r1", "wordllama:l2_supercat:256", "seal", 4, "hybrid"),
        ("manual", "v1#r1", "wordllama:l2_supercat:256", "seal", 5, "keyword"),
        ("other", "v1#r1", "wordllama:l2_supercat:256", "seal", 5, "hybrid"),
    ]:
        assert cache.get(*changed) is None
    cache.put("manual", "v1#r1", "w", "q2", 5, "hybrid", hits)
    cache.get("manual", "v1#r1", "wordllama:l2_supercat:256", "seal", 5, "hybrid")
    cache.put("manual", "v1#r1", "w", "q3", 5, "hybrid", hits)
    assert len(cache) == 2
    assert cache.get("manual", "v1#r1", "w", "q2", 5, "hybrid") is None
    assert cache.get("manual", "v1#r1", "wordllama:l2_supercat:256", "seal", 5, "hybrid") == hits


def test_both_caches_share_one_file_and_survive_restart(tmp_path: Path) -> None:
    path = default_cache_path(tmp_path / "knowledge.sqlite")
    assert path.name == "knowledge.cache.sqlite"
    r, p = RetrievalCache(path), ResponseCache(path)
    r.put("manual", "v1#r1", "w", "q", 5, "keyword", [("manual/a#0", 1.0)])
    p.put("key", "answer", collection="manual")
    r.close()
    p.close()
    r, p = RetrievalCache(path), ResponseCache(path)
    assert r.get("manual", "v1#r1", "w", "q", 5, "keyword") == [("manual/a#0", 1.0)]
    assert p.get("key") is not None
    assert r.invalidate_collection("manual") == 1 and len(p) == 1


def test_damaged_cache_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    cache = ResponseCache(path)
    cache.put("k", "v")
    assert cache.get("k") is not None
    assert list(tmp_path.glob("cache.sqlite.corrupt-*"))


def test_store_uses_and_invalidates_retrieval_cache(tmp_path: Path, embedder: WordLlamaEmbedder) -> None:
    cache_path = default_cache_path(tmp_path / "knowledge.sqlite")
    retrieval, responses = RetrievalCache(cache_path), ResponseCache(cache_path)
    store = KnowledgeStore(tmp_path / "knowledge.sqlite", embedder, retrieval_cache=retrieval, response_cache=responses)
    store.ingest("manual", DOCS, version="v1")
    first = store.retrieve("how do I clean the condenser fins", "manual", 3)
    assert len(retrieval) == 1
    again = store.retrieve("how  do I clean the condenser fins ", "manual", 3)  # same after normalising
    assert again == first and len(retrieval) == 1
    responses.put("answer-key", "rinse from the inside", collection="manual")

    store.ingest("manual", [Document("condenser-cleaning", "# Condenser\n\nNow brush the fins gently.")])
    assert len(retrieval) == 0 and responses.get("answer-key") is None
    after = store.retrieve("how do I clean the condenser fins", "manual", 3)
    assert after[0].doc_id == "condenser-cleaning" and "brush" in after[0].text
    store.close()

    # a restart keeps the entry, keyed by the collection's content version
    reopened = RetrievalCache(cache_path)
    assert len(reopened) == 1
    store = KnowledgeStore(tmp_path / "knowledge.sqlite", embedder, retrieval_cache=reopened)
    assert store.retrieve("how do I clean the condenser fins", "manual", 3) == after
    assert len(reopened) == 1
    store.close()


def test_retrieval_cached_by_an_older_ranking_is_not_returned(tmp_path: Path) -> None:
    """A node upgraded to a new ranking (e.g. identifiers placed first) must not keep answering a
    cached question with the order the old code computed, although the collection did not change."""
    path = tmp_path / "cache.sqlite"
    hits = [("tc5#intro", 0.5), ("tc5#a03", 0.25)]
    old = RetrievalCache(path, ranking=RANKING_VERSION - 1)
    old.put("manual", "v1#r1", "wordllama:l2_supercat:256", "alarm A03", 5, "hybrid", hits)
    assert old.get("manual", "v1#r1", "wordllama:l2_supercat:256", "alarm A03", 5, "hybrid") == hits
    old.close()
    current = RetrievalCache(path)
    assert current.get("manual", "v1#r1", "wordllama:l2_supercat:256", "alarm A03", 5, "hybrid") is None
