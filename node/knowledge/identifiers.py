"""Identifiers in a question: alarm codes, part, model and version numbers, option names, values with units.

Technicians ask by identifier ("What does A03 mean?", "price of KR9-SP-207", "ServerAliveInterval"),
and an identifier names one thing: the chunk that holds it is the answer far more often than a chunk
that merely talks about the same subject. BM25 gives such a term a high weight, but vector similarity
does not see it at all, so in hybrid retrieval the alarm list's introduction used to outrank the A03
section. `extract_identifiers` finds them in text (a pure function); `Identifier.fts_phrase` writes
one as an FTS5 phrase over the index's own tokens, so "TC-5" matches the tokens `tc` `5` in that
order ("TC-5", "TC 5") and "4.5 bar" matches `4` `5` `bar`; the store then puts the chunks holding the
question's selective identifiers first (`queries.identifier_matches`, `search.place_identifier_matches`).

What counts (each needs a digit, an inner `_`, inner capitals, `--` or a trailing `=` to count):
  codes and part/model/version numbers  A03, E-12, KR9-PMP-004, 3HAC12345-1, TC-5, ext4, 2.38.1
  option and setting names              ServerAliveInterval, PASS_MAX_DAYS, lazy_itable_init, --nodeps, Storage=
  numbers with a unit                   4.5 bar, 230 V, 2 A, 50 Hz, 16 mm, 5 °C
Plain words, all-capital acronyms (DNS, UUID) and bare numbers are not identifiers: they name no one thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_IDENTIFIERS = 8
"""At most this many identifiers are taken from one query (the first ones)."""

# fmt: off
UNITS = (
    "bar", "mbar", "psi", "Pa", "kPa", "MPa", "V", "mV", "kV", "VAC", "VDC", "A", "mA", "W", "kW", "kVA", "Hz",
    "kHz", "MHz", "GHz", "mm", "cm", "m", "km", "°C", "°F", "rpm", "ms", "s", "min", "h", "L", "ml", "kg", "g",
    "Nm", "dB", "dBm", "KB", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB",
)
# fmt: on

_FTS_TOKEN_RE = re.compile(r"[^\W_]+", re.UNICODE)
"""What FTS5's unicode61 tokenizer keeps as tokens: runs of letters and digits (`_` and `-` separate)."""
_COMPOUND_RE = re.compile(r"(?<![\w-])-{0,2}[^\W_]+(?:[-./:_][^\W_]+)*=?", re.UNICODE)
_CAMEL_RE = re.compile(r"^[A-Za-z][a-z][a-z0-9]*[A-Z][A-Za-z0-9]*$")
_UNIT_RE = re.compile(
    r"(?<![\w.,])(\d+(?:[.,]\d+)?)\s?("
    + "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
    + r")(?!\w)"
)


@dataclass(frozen=True)
class Identifier:
    text: str
    """As written in the query (trailing `=` and leading `--` kept)."""
    tokens: tuple[str, ...]
    """Its full-text tokens, lower-cased: what the phrase matches."""

    def fts_phrase(self) -> str:
        """An FTS5 phrase matching the identifier's tokens in order (quotes escaped: always valid syntax)."""
        return '"' + " ".join(self.tokens).replace('"', '""') + '"'


def _is_identifier(word: str) -> bool:
    core = word.strip("-").rstrip("=")
    if len(core) < 2 or not any(c.isalnum() for c in core):
        return False
    if word.startswith("--") and len(core) >= 3:
        return True  # a long option: --nodeps
    if word.endswith("=") and len(core) >= 3:
        return True  # a setting as written in a file: Storage=
    has_digit = any(c.isdigit() for c in core)
    has_alpha = any(c.isalpha() for c in core)
    if has_digit and (has_alpha or any(c in "-./:_" for c in core)):
        return not re.fullmatch(r"\d+[.,]\d+", core) or core.count(".") > 1  # 4.5 alone is a number, 2.38.1 not
    if "_" in core.strip("_"):
        return True  # PASS_MAX_DAYS, lazy_itable_init
    return bool(_CAMEL_RE.match(core))  # ServerAliveInterval, LogLevel (not DNS, not Filter)


def tokens_of(text: str) -> tuple[str, ...]:
    """`text`'s full-text tokens, lower-cased, as the index's unicode61 tokenizer splits it."""
    return tuple(t.lower() for t in _FTS_TOKEN_RE.findall(text))


def extract_identifiers(text: str, limit: int = MAX_IDENTIFIERS) -> list[Identifier]:
    """The identifiers in `text` (see the module doc), in order of appearance, deduplicated by their tokens."""
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for m in _UNIT_RE.finditer(text):
        found.append((m.start(), f"{m.group(1)} {m.group(2)}"))
        taken.append(m.span())
    for m in _COMPOUND_RE.finditer(text):
        word = m.group(0).rstrip(".:/-")
        if any(a <= m.start() < b for a, b in taken):
            continue
        if not word.endswith("=") and word.endswith(("-", ".", ":", "/")):
            word = word.rstrip("-.:/")
        if _is_identifier(word):
            found.append((m.start(), word))
    out: list[Identifier] = []
    seen: set[tuple[str, ...]] = set()
    for _, word in sorted(found):
        tokens = tokens_of(word)
        if len(tokens) == 1 and tokens[0].isdigit():
            continue  # "15 %": the unit is no token, a bare number is left
        if tokens and tokens not in seen:
            seen.add(tokens)
            out.append(Identifier(word, tokens))
    return out[:limit]
