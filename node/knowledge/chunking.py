"""Splitting a document into chunks for search: by Markdown headings, then paragraphs, within a token budget.

Deterministic: the same text and settings give the same chunks, so chunk ids
(`<collection>/<doc_id>#<index>`) stay stable across re-ingests of an unchanged document.

- Markdown: ATX (`## Title`) and setext (`Title` over `===`/`---`) headings open sections; fenced
  code blocks are kept whole and their `#` lines are not headings. Each chunk keeps the path of
  headings above it ("Manual > Maintenance > Bearings"), which is prefixed to the text that is
  embedded (`Chunk.search_text`) and indexed for BM25 as a column of its own (schema migration 3).
- Plain text: paragraphs (blank-line separated) only.
- A chunk holds whole paragraphs while they fit `max_tokens`; a longer paragraph is split at
  sentence ends, a longer sentence at word boundaries. A chunk that continues a section starts
  with the last `overlap_tokens` of the previous one (whole sentences where they fit).
- Tokens are approximated by counting words and punctuation marks (close to what a BPE
  tokenizer gives for English prose), or by any `token_count` callable, e.g. a real tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Format = Literal["markdown", "text", "auto", "pages"]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_ATX_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT_RE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?;:])\s+(?=\S)")
HEADING_SEPARATOR = " > "


def approx_tokens(text: str) -> int:
    """Approximate token count: words and punctuation marks."""
    return len(_TOKEN_RE.findall(text))


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 200
    overlap_tokens: int = 30
    token_count: Callable[[str], int] = field(default=approx_tokens, compare=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be at least 16, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise ValueError(
                f"overlap_tokens must be between 0 and max_tokens/2 ({self.max_tokens // 2}), got {self.overlap_tokens}"
            )


@dataclass(frozen=True)
class Chunk:
    index: int
    heading: str
    """Heading path joined with " > ", "" when the chunk sits above the first heading."""
    text: str
    """The chunk's own text, without the heading path."""
    page: int | None = None
    """The page (from 1) of a document of format "pages"; None for other formats."""

    @property
    def search_text(self) -> str:
        """What is indexed and embedded: the heading path, a blank line, the text."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


@dataclass
class _Section:
    path: tuple[str, ...]
    blocks: list[str]


def detect_format(text: str) -> Literal["markdown", "text"]:
    """Markdown when any line outside a code fence is an ATX heading or a fence opens; else text."""
    for line in text.splitlines():
        if _FENCE_RE.match(line):
            return "markdown"
        m = _ATX_RE.match(line)
        if m and m.group(2):
            return "markdown"
    return "text"


def _plain_sections(text: str) -> list[_Section]:
    blocks = [b.strip() for b in re.split(r"\n[ \t]*\n", text)]
    return [_Section((), [b for b in blocks if b])]


def _markdown_sections(text: str) -> list[_Section]:
    sections: list[_Section] = [_Section((), [])]
    stack: list[tuple[int, str]] = []
    para: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if para:
            block = "\n".join(para).strip()
            if block:
                sections[-1].blocks.append(block)
            para.clear()

    def open_section(level: int, title: str) -> None:
        while stack and stack[-1][0] >= level:
            stack.pop()
        if title:
            stack.append((level, title))
        sections.append(_Section(tuple(t for _, t in stack), []))

    for line in text.splitlines():
        if fence is not None:
            para.append(line)
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                fence = None
                flush()
            continue
        fm = _FENCE_RE.match(line)
        if fm:
            flush()
            fence = fm.group(1)
            para.append(line)
            continue
        hm = _ATX_RE.match(line)
        if hm:
            flush()
            open_section(len(hm.group(1)), (hm.group(2) or "").strip())
            continue
        sm = _SETEXT_RE.match(line)
        if sm and len(para) == 1 and para[0].strip():
            title = para.pop().strip()
            open_section(1 if sm.group(1).startswith("=") else 2, title)
            continue
        if not line.strip():
            flush()
            continue
        para.append(line)
    flush()
    return [s for s in sections if s.blocks]


@dataclass(frozen=True)
class _Unit:
    text: str
    sep: str
    """Separator placed before this unit when it follows another in a chunk."""


def _split_words(text: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Split at word boundaries into pieces of at most `budget` tokens (a single huge word stays whole)."""
    pieces: list[str] = []
    current: list[str] = []
    for word in text.split():
        if current and count(" ".join([*current, word])) > budget:
            pieces.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def _units(block: str, budget: int, count: Callable[[str], int]) -> list[_Unit]:
    """A block as one unit when it fits, else its sentences (or word windows of a long sentence)."""
    if count(block) <= budget:
        return [_Unit(block, "\n\n")]
    out: list[_Unit] = []
    for i, sentence in enumerate(_SENTENCE_END_RE.split(block)):
        sep = "\n\n" if i == 0 else " "
        if count(sentence) <= budget:
            out.append(_Unit(sentence, sep))
        else:
            out.extend(_Unit(p, sep if j == 0 else " ") for j, p in enumerate(_split_words(sentence, budget, count)))
    return out


def _join(units: list[_Unit]) -> str:
    return "".join(u.text if i == 0 else u.sep + u.text for i, u in enumerate(units))


def _overlap(units: list[_Unit], budget: int, count: Callable[[str], int]) -> list[_Unit]:
    """The tail of a chunk to repeat at the start of the next: whole sentences, else the last words."""
    if budget <= 0 or not units:
        return []
    sentences: list[str] = []
    full = False
    for u in reversed(units):
        for s in reversed(_SENTENCE_END_RE.split(u.text)):
            if count(" ".join([s, *sentences])) > budget:
                full = True
                break
            sentences.insert(0, s)
        if full:
            break
    if not full:  # the whole previous chunk would repeat: no overlap
        return []
    if sentences:
        return [_Unit(" ".join(sentences), "\n\n")]
    words = units[-1].text.split()
    tail: list[str] = []
    for w in reversed(words):
        if count(" ".join([w, *tail])) > budget:
            break
        tail.insert(0, w)
    return [_Unit(" ".join(tail), "\n\n")] if tail else []


def _pack(section: _Section, config: ChunkingConfig) -> list[tuple[str, str]]:
    count = config.token_count
    heading = HEADING_SEPARATOR.join(section.path)
    budget = max(config.max_tokens - (count(heading) if heading else 0), config.max_tokens // 2)
    units = [u for block in section.blocks for u in _units(block, budget, count)]
    out: list[tuple[str, str]] = []
    current: list[_Unit] = []
    fresh = 0  # units in `current` that are not overlap from the previous chunk
    for unit in units:
        if current and fresh and count(_join([*current, unit])) > budget:
            out.append((heading, _join(current)))
            carried = _overlap(current, min(config.overlap_tokens, budget - count(unit.text)), count)
            current, fresh = carried, 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        out.append((heading, _join(current)))
    return out


def chunk_text(text: str, fmt: Format = "auto", config: ChunkingConfig | None = None) -> list[Chunk]:
    """Split `text` into chunks; an empty or blank text gives no chunks."""
    config = config or ChunkingConfig()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if fmt == "pages":  # form-feed separated pages, each chunked as plain text, chunks numbered on
        out: list[Chunk] = []
        for page, page_text in enumerate(text.split("\f"), start=1):
            for c in chunk_text(page_text, "text", config):
                out.append(Chunk(len(out), c.heading, c.text, page))
        return out
    if fmt == "auto":
        fmt = detect_format(text)
    sections = _markdown_sections(text) if fmt == "markdown" else _plain_sections(text)
    pieces = [p for s in sections for p in _pack(s, config)]
    return [Chunk(i, heading, body) for i, (heading, body) in enumerate(pieces)]
