"""GBNF for JSON numbers within a schema's bounds (`minimum`, `maximum`, `exclusiveMinimum`,
`exclusiveMaximum`), which llama.cpp's schema converter leaves out.

An integer range becomes an alternation over digit strings of each length (the usual split of a
numeric range into prefix classes: 17..342 is `1[7-9] | [2-9][0-9] | [1-2][0-9][0-9] | 3[0-3][0-9] |
34[0-2]`), so every integer the grammar lets through is in the range, and every one in the range
can be written. A bounded `number` gets the same for its integer part, with a fraction only where
the whole range of fractions stays inside the bounds: what it lets through always validates, and
(as with bounded strings) a value with a fraction right at a non-integer bound may be left out.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DIGITS = 16  # integers up to 10**16 - 1, as the converter's own integral part
FRACTION = r'("." [0-9]{1,15})?'


def _equal_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching every digit string of len(lo) between lo and hi (equal lengths, lo <= hi)."""
    n = len(lo)
    if n == 0:
        return []
    if lo == "0" * n and hi == "9" * n:
        return [f"[0-9]{{{n}}}" if n > 1 else "[0-9]"]
    if lo == hi:
        return [f'"{lo}"']
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" {_group(_equal_length(lo[1:], hi[1:]))}']
    rest = n - 1
    if rest == 0:
        return [f"[{lo}-{hi}]"]
    out = []
    low_first, high_first = int(lo[0]), int(hi[0])
    if lo[1:] == "0" * rest:
        low_first -= 1  # the whole first block is in range: fold it into the middle
    else:
        out.append(f'"{lo[0]}" {_group(_equal_length(lo[1:], "9" * rest))}')
    top_whole = hi[1:] == "9" * rest
    if top_whole:
        high_first += 1
    if high_first - low_first > 1:
        a, b = low_first + 1, high_first - 1
        digits = f"[{a}-{b}]" if a != b else f'"{a}"'
        out.append(f"{digits} [0-9]{{{rest}}}" if rest > 1 else f"{digits} [0-9]")
    if not top_whole:
        out.append(f'"{hi[0]}" {_group(_equal_length("0" * rest, hi[1:]))}')
    return out


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


def _non_negative(lo: int, hi: int) -> list[str]:
    """Alternatives for the integers lo..hi, 0 <= lo <= hi, without leading zeros."""
    out: list[str] = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(hi, 10**digits - 1)
        if a <= b:
            out.extend(_equal_length(str(a), str(b)))
    return out


def integer_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the integers in [lo, hi] (None: unbounded on that side, up to MAX_DIGITS)."""
    top = 10**MAX_DIGITS - 1
    lo = -top if lo is None else max(lo, -top)
    hi = top if hi is None else min(hi, top)
    if lo > hi:
        raise ValueError(f"no integer lies between {lo} and {hi}")
    parts = []
    if hi >= 0:
        parts.extend(_non_negative(max(lo, 0), hi))
    if lo < 0:
        negative = _non_negative(max(-hi, 1), -lo)
        parts.append(f'"-" {_group(negative)}')
    return _group(parts)


def bounds_of(schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    """(lower, upper, lower exclusive, upper exclusive) of a numeric schema (draft 4 booleans too)."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    lo_ex = hi_ex = False
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_lo, bool):
        lo_ex = ex_lo
    elif isinstance(ex_lo, int | float) and (lo is None or ex_lo >= lo):
        lo, lo_ex = ex_lo, True
    if isinstance(ex_hi, bool):
        hi_ex = ex_hi
    elif isinstance(ex_hi, int | float) and (hi is None or ex_hi <= hi):
        hi, hi_ex = ex_hi, True
    return lo, hi, lo_ex, hi_ex


def has_bounds(schema: dict[str, Any]) -> bool:
    return schema.get("type") in ("integer", "number") and any(
        isinstance(schema.get(k), int | float) and not isinstance(schema.get(k), bool)
        for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    )


def _integer_bounds(lo: float | None, hi: float | None, lo_ex: bool, hi_ex: bool) -> tuple[int | None, int | None]:
    ilo = None if lo is None else (math.floor(lo) + 1 if lo_ex or lo != math.floor(lo) else int(lo))
    ihi = None if hi is None else (math.ceil(hi) - 1 if hi_ex or hi != math.ceil(hi) else int(hi))
    return ilo, ihi


def numeric_rule(schema: dict[str, Any]) -> str:
    """The GBNF body (before `space`) of a bounded integer or number schema; ValueError when nothing fits."""
    lo, hi, lo_ex, hi_ex = bounds_of(schema)
    ilo, ihi = _integer_bounds(lo, hi, lo_ex, hi_ex)
    if schema.get("type") == "integer":
        return integer_range(ilo, ihi)
    # number: integers from the integer range, and p.ddd where every such value lies in the bounds:
    # p >= lo and p + 1 <= hi (p >= 0), or -(p + 1) >= lo and -p <= hi (written "-p.ddd", p >= 0).
    # At an exclusive integer bound b itself, "b.ddd" needs a digit other than 0.
    parts = []
    pos_lo = 0 if lo is None else max(0, math.ceil(lo))
    if lo is not None and lo_ex and lo == pos_lo and (hi is None or lo + 1 <= hi):
        parts.append(f'"{pos_lo}" "." [0-9]{{0,14}} [1-9]')
        pos_lo += 1
    pos_hi = None if hi is None else math.floor(hi) - 1
    if pos_hi is None or pos_lo <= pos_hi:
        parts.append(f'{integer_range(pos_lo, pos_hi)} "." [0-9]{{1,15}}')
    neg_lo = 0 if hi is None or hi > 0 else math.ceil(-hi)
    neg_hi = None if lo is None else math.floor(-lo) - 1
    if hi is not None and hi <= 0 and hi_ex and -hi == neg_lo and (neg_hi is None or neg_lo <= neg_hi):
        parts.append(f'"-{neg_lo}" "." [0-9]{{0,14}} [1-9]')
        neg_lo += 1
    if neg_hi is None or neg_lo <= neg_hi:
        parts.append(f'"-" {integer_range(neg_lo, neg_hi)} "." [0-9]{{1,15}}')
    if ilo is None or ihi is None or ilo <= ihi:
        parts.append(integer_range(ilo, ihi))
    if not parts:
        raise ValueError(f"no number between {lo} and {hi} can be written with a grammar")
    return _group(parts)
