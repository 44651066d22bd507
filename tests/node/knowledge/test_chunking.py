"""Chunking: headings, paragraphs, token budget, overlap, determinism."""

from __future__ import annotations

import itertools

import pytest

from edgefleet.node.knowledge.chunking import ChunkingConfig, approx_tokens, chunk_text, detect_format

MANUAL = """Some text before any heading.

# Pump manual

## Maintenance

### Bearings

Grease is not needed: the bearings are sealed.

```sh
# this is a comment in a code block, not a heading
echo done
```

## Setext section
-----------------

Wait, that line above is a heading too.

Another title
=============

Under a level-one setext heading.
"""


def test_markdown_heading_paths_are_kept_and_prefixed() -> None:
    chunks = chunk_text(MANUAL)
    headings = [c.heading for c in chunks]
    assert headings[0] == ""
    assert "Pump manual > Maintenance > Bearings" in headings
    bearings = next(c for c in chunks if c.heading.endswith("Bearings"))
    assert "# this is a comment" in bearings.text  # fenced code stays in its section
    assert bearings.search_text.startswith("Pump manual > Maintenance > Bearings\n\n")
    assert bearings.search_text.endswith(bearings.text)
    assert headings[-1] == "Another title"
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_plain_text_is_paragraphs_only() -> None:
    text = "# not a heading in plain text\n\nFirst paragraph.\n\nSecond paragraph."
    chunks = chunk_text(text, "text")
    assert all(c.heading == "" for c in chunks)
    assert chunks[0].text.startswith("# not a heading")
    assert chunks[0].search_text == chunks[0].text


def test_detect_format() -> None:
    assert detect_format("# Title\n\nbody") == "markdown"
    assert detect_format("just text\n\nmore text") == "text"
    assert detect_format("#hashtag is not a heading") == "text"


def test_token_budget_and_overlap() -> None:
    sentences = [f"Sentence {i} explains how bearing {i} is checked." for i in range(120)]
    text = "# Doc\n\n## Long section\n\n" + " ".join(sentences) + "\n\nA short closing paragraph."
    config = ChunkingConfig(max_tokens=80, overlap_tokens=20)
    chunks = chunk_text(text, config=config)
    assert len(chunks) > 5
    for c in chunks:
        assert approx_tokens(c.text) <= 80
        assert c.heading == "Doc > Long section"
    for a, b in itertools.pairwise(chunks):
        tail_sentence = b.text.split(". ")[0]
        assert tail_sentence in a.text  # b starts with the end of a
        assert approx_tokens(tail_sentence) <= 20
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)  # nothing lost


def test_long_sentence_is_split_at_words() -> None:
    text = " ".join(f"word{i}" for i in range(500))
    chunks = chunk_text(text, config=ChunkingConfig(max_tokens=50, overlap_tokens=0))
    assert len(chunks) == 10
    assert " ".join(c.text for c in chunks) == text


def test_custom_token_counter() -> None:
    text = "\n\n".join("x" * 40 for _ in range(10))  # ten paragraphs of 40 characters
    chunks = chunk_text(text, config=ChunkingConfig(max_tokens=25, overlap_tokens=0, token_count=lambda s: len(s) // 4))
    assert len(chunks) == 5  # two 10-"token" paragraphs (plus separator) per chunk


def test_deterministic() -> None:
    config = ChunkingConfig(max_tokens=40, overlap_tokens=10)
    assert chunk_text(MANUAL * 5, config=config) == chunk_text(MANUAL * 5, config=config)


def test_empty_and_heading_only_give_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text("   \n\n  ") == []
    assert chunk_text("# Title\n\n## Sub\n") == []


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8, 0), (100, 51), (100, -1)])
def test_config_is_validated(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap)
