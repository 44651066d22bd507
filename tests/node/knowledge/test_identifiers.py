"""Identifiers (alarm codes, part and model numbers, option names, units): extraction, placement, and a real store.

The store tests load the project's chiller corpus (bench/rag_corpus) into a real SQLite store with real
wordllama embeddings and ask by code and part number in every mode that should honour identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.node.knowledge import Document, KnowledgeStore, WordLlamaEmbedder
from edgefleet.node.knowledge.identifiers import extract_identifiers, tokens_of
from edgefleet.node.knowledge.search import place_identifier_matches

CORPUS = Path(__file__).resolve().parents[3] / "bench" / "rag_corpus"


def texts(query: str) -> list[str]:
    return [i.text for i in extract_identifiers(query)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("What does alarm A03 on the TC-5 mean?", ["A03", "TC-5"]),
        ("Price of KR9-PMP-004 and 3HAC12345-1?", ["KR9-PMP-004", "3HAC12345-1"]),
        ("E-12 after the update to 2.38.1", ["E-12", "2.38.1"]),
        ("relief valve at 4.5 bar on the 230 V unit, 2 A fuse, 50 Hz", ["4.5 bar", "230 V", "2 A", "50 Hz"]),
        ("set ServerAliveInterval, PASS_MAX_DAYS, lazy_itable_init, --nodeps or Storage=", None),
        ("mount an ext4 disk with SHA512", ["ext4", "SHA512"]),
        ("use options ndots:5 in resolv.conf", ["ndots:5"]),
    ],
)
def test_extract_identifiers(query: str, expected: list[str] | None) -> None:
    if expected is None:
        expected = ["ServerAliveInterval", "PASS_MAX_DAYS", "lazy_itable_init", "--nodeps", "Storage="]
    assert texts(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        "How do I clean the condenser?",
        "DNS and UUID and JSON",  # acronyms name no one thing
        "pressure is 4.5, 15 % of 300",  # bare numbers, a unit that is no token
        "a filter-drier, e.g. the one in the liquid line",
        "",
        "??? --- ===",
    ],
)
def test_no_identifiers(query: str) -> None:
    assert texts(query) == []


def test_identifier_tokens_and_phrase() -> None:
    (tc5,) = extract_identifiers("TC-5")
    assert tc5.tokens == ("tc", "5") == tokens_of("tc 5")
    assert tc5.fts_phrase() == '"tc 5"'
    (bar,) = extract_identifiers("4.5 bar")
    assert bar.tokens == ("4", "5", "bar")
    assert len(extract_identifiers(" ".join(f"A{i:02d}" for i in range(20)))) == 8  # MAX_IDENTIFIERS
    assert texts("A03 a03 A03") == ["A03"]


def test_place_identifier_matches() -> None:
    ranked = [("intro", 0.3), ("a08", 0.2), ("a03", 0.1), ("a04", 0.05)]
    assert place_identifier_matches(ranked, {}) == ranked
    placed = place_identifier_matches(ranked, {"a03": (1, 1), "troubleshooting": (1, 0), "parts": (2, 0)})
    assert [item for item, _ in placed] == ["parts", "a03", "troubleshooting", "intro", "a08", "a04"]
    scores = [score for _, score in placed]
    assert scores == sorted(scores, reverse=True) and scores[2] > 0.3


@pytest.fixture(scope="module")
def chiller(tmp_path_factory: pytest.TempPathFactory, embedder: WordLlamaEmbedder) -> Iterator[KnowledgeStore]:
    docs = []
    for path in sorted(CORPUS.glob("*.md")):
        if path.name != "README.md":
            docs.append(Document(path.stem, path.read_text(encoding="utf-8"), {"source": path.name}, "markdown"))
    with KnowledgeStore(tmp_path_factory.mktemp("chiller") / "knowledge.sqlite", embedder) as store:
        store.install_collection("chiller", "1", docs)
        yield store


@pytest.mark.parametrize("mode", ["hybrid", "keyword"])
def test_alarm_codes_rank_first(chiller: KnowledgeStore, mode: str) -> None:
    """Hybrid by identifier placement; keyword mode (plain BM25, the part fusion takes) by the code's rarity."""
    sections = re.findall(r"^## (A\d\d .*)$", (CORPUS / "tc5-alarm-codes.md").read_text(), re.M)
    assert len(sections) == 8
    for section in sections:
        code = section.split()[0]
        hits = chiller.retrieve(f"What does alarm {code} on the TC-5 mean?", "chiller", 5, mode)  # type: ignore[arg-type]
        assert hits[0].doc_id == "tc5-alarm-codes", (code, [h.chunk_id for h in hits])
        assert hits[0].heading.endswith(section), (code, hits[0].heading)
    # the report's question: A03's section, not the list's introduction or A08
    (first, *_) = chiller.retrieve("What does alarm A03 on the TC-5 mean?", "chiller", 5)
    assert "No glycol flow" in first.heading and "flow switch opened" in first.text


@pytest.mark.parametrize(
    ("part", "row"),
    [
        ("KR9-SP-120", "Y-strainer screen"),
        ("KR9-EL-040", "Phase monitor relay"),
        ("KR9-SE-010", "High-pressure transmitter"),
        ("KR9-SP-215", "Schrader valve cores"),
    ],
)
def test_part_numbers_rank_first(chiller: KnowledgeStore, part: str, row: str) -> None:
    for query in (f"What is part {part}?", f"{part} in stock?"):
        hits = chiller.retrieve(query, "chiller", 5)
        assert hits[0].doc_id == "parts-list", (query, [h.chunk_id for h in hits])
        assert f"| {part} | {row}" in hits[0].text


def test_the_parts_are_left_as_they_are(chiller: KnowledgeStore) -> None:
    """Keyword and vector modes are the parts of hybrid: identifiers are not placed there (rag_eval compares them)."""
    query = "What does alarm A03 on the TC-5 mean?"
    vector = chiller.retrieve(query, "chiller", 5, "vector")
    assert all(-1.0 <= h.score <= 1.0 for h in vector)  # cosine similarities, no placement score
    assert "No glycol flow" not in vector[0].heading  # the report's failure: vectors do not see "A03"
    keyword = chiller.retrieve(query, "chiller", 5, "keyword")
    assert [h.score for h in keyword] == sorted((h.score for h in keyword), reverse=True)
    hybrid = chiller.retrieve(query, "chiller", 5, "hybrid")
    assert hybrid[0].score >= 1.0 > hybrid[-1].score  # placed: 1 per place above the best fused score (< 1)
