"""Fixtures of the knowledge-store tests: real wordllama embeddings, small documents, stores in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.node.knowledge import Document, KnowledgeStore, LlamaEmbedder, WordLlamaEmbedder

DOCS = [
    Document(
        "pump-manual",
        "# Glycol pump\n\n## Bearings\n\nThe pump motor bearings are sealed for life and need no grease. "
        "Replace the motor when the bearings get loud.\n\n## Mechanical seal\n\nA new shaft seal may weep a few "
        "drops an hour during the first week. Replace the seal with kit SP-114 when glycol crystals appear.",
        {"title": "Glycol pump", "kind": "manual"},
    ),
    Document(
        "condenser-cleaning",
        "# Condenser coil\n\n## Cleaning\n\nA dirty condenser coil raises the head pressure. Rinse the fins with "
        "low-pressure water from the inside outwards and straighten bent fins with a fin comb.",
        {"title": "Condenser coil"},
    ),
    Document(
        "alarm-codes",
        "# Alarm codes\n\n## A03 No flow\n\nThe flow switch opened while the pump ran. Open the valves and clean "
        "the strainer.\n\n## A04 Phase fault\n\nThe phase monitor found a missing phase or a reversed phase "
        "order. Swap two incoming phases at the main isolator.",
    ),
    Document(
        "lockout",
        "Before working inside the cabinet, switch off the main isolator, fit your padlock and a tag, and test "
        "that the terminals are dead.\n\nWait five minutes before touching the fan drives.",
        {"title": "Lockout and tagout"},
        "text",
    ),
]


@pytest.fixture(scope="session")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


@pytest.fixture(scope="session")
def other_embedder(embedder: WordLlamaEmbedder) -> LlamaEmbedder:
    """Real embeddings through the embed_fn path the node's engine uses, under another identity."""

    def embed_fn(texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in embedder.embed(texts)[:, ::-1]]

    return LlamaEmbedder(embed_fn, "test:wordllama-reversed:256", 256)


@pytest.fixture
def store(tmp_path: Path, embedder: WordLlamaEmbedder) -> Iterator[KnowledgeStore]:
    with KnowledgeStore(tmp_path / "knowledge.sqlite", embedder) as s:
        s.ingest("manual", DOCS, version="v1")
        yield s
