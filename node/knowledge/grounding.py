"""Cite or abstain: how a knowledge answer is grounded in its sources (pure logic, no I/O).

- `source_block`: the sources as the prompt shows them, numbered [1]..[n] with their document and
  heading, after a short instruction: answer only from them, quote, cite [n], or say `ABSTAIN_TEXT`.
- `relevance`: how well the best source covers the question's words; an identifier the question
  names (alarm code, part or model number) that no source contains makes it 0. Below the node's
  threshold the answer is `ABSTAIN_TEXT` without asking the model.
- `check`: after generation, each sentence of the answer against the sources. A sentence's claim
  words (its words less the question's) must mostly (CLAIM_SUPPORT) appear in one source, and each
  number or identifier it states must stand in that source beside one of the sentence's words (a
  unit is not enough: `1.9 litres` of oil does not support `1.9 litres of refrigerant`). The
  supporting sources are the answer's citations, and one of them must cover the question. An answer
  that says the documents do not cover the question is an abstention (no citations), unless a source
  sentence plainly answers it (STRONG_COVERAGE). An answer with an unsupported sentence is flagged,
  and the sources' own best sentence for the question is added, quoted with its citation (`extract`);
  when no source sentence covers the question either, the answer abstains.

Why extract: a 135M or 0.5B model often paraphrases wrongly what its sources say; a technician wants
what the manual says, so the node quotes it rather than drop the answer or pass the wrong one on.
Words are compared after light stemming; identifiers without their separators (`TC-5` = `tc5`).
Lexical, so a wrong answer made of the sources' own words can pass (bench/answer_eval.py measures it).
Deterministic: the same answer and sources always give the same verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ABSTAIN_TEXT = "The documents do not cover this."
CITE_INTRO = (
    "Answer the question using only the numbered sources below (this site's own documents). "
    "Quote the sentence that answers it and cite its number, like [1]. "
    f"If the sources do not answer it, reply only: {ABSTAIN_TEXT}\n\n"
)
EXTRACT_INTRO = "The sources say: "
CLAIM_SUPPORT = 0.6  # share of a sentence's claim words that one source must contain
STRONG_COVERAGE = 0.75  # a quoted sentence that answers although the model said the documents do not
MIN_COVERAGE = 0.5  # a cited source (or a quoted sentence) must hold more than this weighted share of the question
MAX_QUOTE_CHARS = 400

_WORD = re.compile(r"[A-Za-z0-9]+(?:[-./][A-Za-z0-9]+)*")
_MARK = re.compile(r"\[(\d{1,2})\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])|\n\s*\n|\n(?=\s*(?:[-*]|\d+[.)])\s)|\n(?=\s*\|)")
_LABEL = re.compile(r"^[ \t]*\[(\d{1,2})\][^\n]* — [^\n]*$", re.MULTILINE)  # `[n] doc — heading` (source_block)
_TABLE_RULE = re.compile(r"^\|?[\s|:-]+\|?$")
_NOT_COVERED = re.compile(
    r"(?i)\b(?:documents?|sources?|manuals?|context|information|text)\b[^.]{0,40}\b(?:do|does|did)\s*(?:not|n't)\s+"
    r"(?:cover|contain|mention|say|answer|include|provide|specify)|\bnot\s+(?:covered|mentioned|specified)\b"
    r"|\bno\s+information\b|\bcannot\s+(?:find|answer)\b"
)
STOPWORDS = frozenset(
    """a an the and or but if then than so of to in on at by for from with without into onto over under about as
    is are was were be been being am do does did doing done have has had having can could should would will
    shall may might must i me my we our us you your he she it its they them their this that these those there
    here what which who whom whose when where why how any some all each every no not nor only own same too very
    just also please tell know need want get got mean means meaning say says said thing things one ones let
    happen happens use used using way make made out up down off again once yes ok okay does doesn don isn
    type kind much many long often new option options value values setting settings""".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Source:
    """A retrieved chunk as the prompt numbers it."""

    n: int
    chunk_id: str
    doc_id: str
    text: str
    heading: str = ""
    page: int = 0  # 0: the chunk has no page (not from a paged document)

    @property
    def label(self) -> str:
        """`document — heading (page p)`, as the prompt and an agent's knowledge_search show a source."""
        return (
            self.doc_id + (f" — {self.heading}" if self.heading else "") + (f" (page {self.page})" if self.page else "")
        )


@dataclass(frozen=True)
class Citation:
    n: int
    chunk_id: str
    doc_id: str
    page: int
    quote: str  # the source sentence that supports the answer


@dataclass(frozen=True)
class Relevance:
    score: float  # 0..1: share of the question's words the best source holds
    missing: tuple[str, ...] = ()  # identifiers of the question found in no source


@dataclass(frozen=True)
class Verdict:
    citations: tuple[Citation, ...]
    supported: bool  # every claim of the answer is in a source (an abstention is supported)
    abstained: bool  # the answer says the documents do not cover the question
    appendix: str = ""  # text to add after the model's answer (the quoted sources), "" for none
    reason: str = ""  # supported | model_abstained | extracted | unsupported | below_threshold | empty


# -- words ------------------------------------------------------------------------------------------------
def _stem(w: str) -> str:
    """Plural and verb endings off, the same way for question, answer and sources (`valves` = `valve`)."""
    if len(w) > 5 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 5 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 4:
            return w[: -len(suffix)]
    return w


def _is_identifier(w: str) -> bool:
    return any(c.isdigit() for c in w) and any(c.isalpha() for c in w)


def _norm(w: str) -> str:
    return re.sub(r"[-./]", "", w.lower())


def terms(text: str) -> set[str]:
    """Content words, stemmed; identifiers and numbers without separators (`TC-5` -> `tc5`, `3.5` -> `35`)."""
    out: set[str] = set()
    for raw in _WORD.findall(text):
        w = raw.lower()
        if any(c.isdigit() for c in w):
            out.add(_norm(w))
            continue
        for part in re.split(r"[-./]", w):
            if part and part not in STOPWORDS and len(part) > 1:
                out.add(_stem(part))
    return out


def identifiers(text: str) -> set[str]:
    """Codes, part and model numbers (letters and digits in one word), normalised."""
    return {_norm(w) for w in _WORD.findall(text) if _is_identifier(w)}


def numbers(text: str) -> set[str]:
    """Numbers and identifiers: what an answer may not state unless a source does."""
    return {_norm(w) for w in _WORD.findall(text) if any(c.isdigit() for c in w)}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def _source_terms(s: Source) -> set[str]:
    return terms(s.heading) | terms(s.text)


def _leaf(heading: str) -> str:
    return heading.rsplit(">", 1)[-1].strip()


# -- the prompt ---------------------------------------------------------------------------------------------
def source_block(sources: list[Source], max_chars: int = 1200) -> str:
    """The system text: the instruction, then each source as `[n] document — heading (page p)` and its text."""
    parts = [CITE_INTRO]
    for s in sources:
        parts.append(f"[{s.n}] {s.label}\n{s.text[:max_chars].strip()}\n\n")
    return "".join(parts).rstrip()


# -- before the model ---------------------------------------------------------------------------------------
def relevance(question: str, sources: list[Source]) -> Relevance:
    """How well the best source covers the question (1.0 for a question with no content words)."""
    if not sources:
        return Relevance(0.0)
    wanted = terms(question)
    every = set().union(*(numbers(s.heading) | numbers(s.text) for s in sources))
    missing = tuple(sorted(i for i in identifiers(question) if i not in every))
    if missing:
        return Relevance(0.0, missing)
    if not wanted:
        return Relevance(1.0)
    best = max(len(wanted & _source_terms(s)) / len(wanted) for s in sources)
    return Relevance(round(best, 3))


# -- after the model ----------------------------------------------------------------------------------------
def says_not_covered(answer: str) -> bool:
    return ABSTAIN_TEXT.lower().rstrip(".") in answer.lower() or bool(_NOT_COVERED.search(answer))


def _quote_sentences(s: Source) -> list[str]:
    return [x for x in sentences(s.text) if terms(x) and not _TABLE_RULE.match(x)]


def _best_quote(s: Source, claim: set[str]) -> str:
    """The source's sentence most like the answer's: its numbers first, then its words."""
    quotes = _quote_sentences(s) or [s.text.strip()]
    key = lambda q: (len(claim & numbers(q)), not q.startswith("|"), len(claim & terms(q)), -quotes.index(q))  # noqa: E731
    return max(quotes, key=key)[:MAX_QUOTE_CHARS]


def _cite(s: Source, quote: str) -> Citation:
    return Citation(s.n, s.chunk_id, s.doc_id, s.page, quote)


NEAR_WORDS = 6  # a number an answer states must stand this close to one of the sentence's words in the source
# Too common beside a number to tie it to a claim: `1.9 litres` says nothing of refrigerant or oil.
WEAK = frozenset(
    """set value default litre liter bar kg mm cm m c k v hz kw w minute second hour day week month year
    percent time""".split()  # noqa: SIM905
)


def _near(number: str, context: set[str], source: Source) -> bool:
    """`number` occurs in the source within NEAR_WORDS words of a word of `context` in one sentence (a table row
    is one), or as the one number in the prose of a section whose heading has such a word."""
    if number in numbers(source.heading) and context & terms(source.heading):
        return True
    prose = [x for x in sentences(source.text) if not x.lstrip().startswith("|")]
    figures = [x for x in prose if numbers(x)]
    # the section's one figure, under a heading that names the claim (`Choosing the concentration`: `40 %`)
    alone = len(figures) == 1 and len(numbers(figures[0])) == 1 and bool(context & terms(source.heading) - WEAK)
    for sentence in sentences(source.text):  # a table row is a sentence: a number is not tied to its header
        words = _WORD.findall(sentence)
        for i, w in enumerate(words):
            if _norm(w) == number:
                if alone and sentence in figures:
                    return True
                window = " ".join(words[max(0, i - NEAR_WORDS) : i + NEAR_WORDS + 1])
                if (terms(window) - {number} - WEAK) & context:
                    return True
    return False


def _supporting(sentence: str, question: set[str], sources: list[Source]) -> Source | bool | None:
    """The source that supports one answer sentence; True: nothing to support (a restatement); None: unsupported."""
    claim = terms(_MARK.sub(" ", sentence)) - question
    if not claim:
        return True
    marked = {int(m) for m in _MARK.findall(sentence)}
    plain = _MARK.sub(" ", sentence)
    nums = numbers(plain) - question
    context = terms(plain) - numbers(plain) - WEAK
    best: tuple[float, int, Source] | None = None
    for s in sources:
        have = _source_terms(s)
        share = len(claim & have) / len(claim)
        if share < CLAIM_SUPPORT or not all(_near(n, context, s) for n in nums):
            continue
        rank = (share, 1 if s.n in marked else 0, s)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best[2] if best else None


COMMON_WEIGHT = 0.35  # a question word most sources hold (`TC-5`, `alarm` over a list of alarms) counts less


def key_weights(question: str, sources: list[Source]) -> dict[str, float]:
    """The question's words, weighted: 1, or COMMON_WEIGHT for those more than half the sources hold."""
    wanted = terms(question)
    if len(sources) < 3:
        return dict.fromkeys(wanted, 1.0)
    held = [_source_terms(s) for s in sources]
    return {t: COMMON_WEIGHT if sum(t in h for h in held) > len(held) / 2 else 1.0 for t in wanted}


def coverage(question: str, sources: list[Source], of: list[Source]) -> list[float]:
    """The weighted share of the question's words (`key_weights` over `sources`) each of `of` holds."""
    weights = key_weights(question, sources)
    total = sum(weights.values()) or 1.0
    return [sum(w for t, w in weights.items() if t in _source_terms(s)) / total for s in of] or [0.0]


def cited_sources(cited: dict[int, Citation], sources: list[Source]) -> list[Source]:
    return [s for s in sources if s.n in cited]


def extract(question: str, sources: list[Source], least: float = MIN_COVERAGE) -> tuple[str, Citation] | None:
    """The source sentence that best covers the question's words (weighted by `key_weights`), quoted with its
    citation, or None when none covers more than `least` of them."""
    weights = key_weights(question, sources)
    total = sum(weights.values())
    if not total:
        return None
    best: tuple[float, int, str, Source] | None = None
    for s in sources:
        above = terms(s.heading)  # a sentence says what it says under its headings
        for i, q in enumerate(_quote_sentences(s)):
            got = weights.keys() & (terms(q) | above)
            cover = sum(weights[t] for t in got) / total
            rank = (cover, -i, q, s)
            if best is None or rank[:2] > best[:2]:
                best = rank
    if best is None or best[0] <= least:
        return None
    _, i, q, s = best
    leaf = _leaf(s.heading)
    shown = q if not leaf or terms(leaf) <= terms(q) else f"{leaf}: {q}"
    return f'"{shown[:MAX_QUOTE_CHARS]}" [{s.n}]', _cite(s, q)


def abstain(reason: str) -> Verdict:
    return Verdict((), True, True, "", reason)


def check(question: str, answer: str, sources: list[Source], extractive: bool = True) -> Verdict:
    """The answer against its sources: citations, supported, abstained and what to append (see the module doc)."""
    if not answer.strip():
        return _fallback(question, sources, extractive, "empty")
    if says_not_covered(answer):  # unless a source sentence plainly answers the question: then quote it
        found = extract(question, sources, STRONG_COVERAGE) if extractive else None
        if found is None:
            return abstain("model_abstained")
        return Verdict((found[1],), False, False, f"\n\n{EXTRACT_INTRO}{found[0]}", "extracted")
    asked = terms(question)
    answer = _LABEL.sub(r"[\1]", answer)  # a source's label copied from the prompt is a citation, not a claim
    cited: dict[int, Citation] = {}
    unsupported = 0
    for sentence in sentences(answer):
        s = _supporting(sentence, asked, sources)
        if s is None:
            unsupported += 1
        elif isinstance(s, Source) and s.n not in cited:
            cited[s.n] = _cite(s, _best_quote(s, terms(sentence)))
    if not unsupported and cited and max(coverage(question, sources, cited_sources(cited, sources))) > MIN_COVERAGE:
        return Verdict(tuple(cited[n] for n in sorted(cited)), True, False, "", "supported")
    return _fallback(question, sources, extractive, "unsupported")


def _fallback(question: str, sources: list[Source], extractive: bool, reason: str) -> Verdict:
    found = extract(question, sources) if extractive else None
    if found is None:
        return Verdict((), False, True, f"\n\n{ABSTAIN_TEXT}", reason)
    text, citation = found
    return Verdict((citation,), False, False, f"\n\n{EXTRACT_INTRO}{text}", "extracted")
