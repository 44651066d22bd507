#!/usr/bin/env python3
"""Rebuild this corpus from the manual pages installed on a Debian machine (see README.md).

    .venv/bin/python bench/rag_corpus_heldout/make_corpus.py PAGE...   # e.g. login.defs mke2fs

Rendered as in `bench/rag_corpus_debian/make_corpus.py` (man -P cat, sections `##`, subsections and
option entries `###`), with two additions for pages that one does not handle: mdoc pages (ssh_config),
whose tags sit at 5 columns, are shifted to the man layout first; and tags of nested lists (a short
line followed by text indented 4 or more columns deeper, e.g. resolv.conf's `ndots:n`) become `###` too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("debian_corpus", HERE.parent / "rag_corpus_debian" / "make_corpus.py")
assert _spec is not None and _spec.loader is not None
debian_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(debian_corpus)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def shift_mdoc(text: str) -> str:
    """mdoc's layout (body at 5, tag bodies at 13) as man's (7, 11+) when the page uses it."""
    lines = text.splitlines()
    if sum(_indent(x) == 5 for x in lines if x.strip()) < sum(_indent(x) == 7 for x in lines if x.strip()):
        return text
    return "\n".join(
        (" " * (_indent(x) + (2 if _indent(x) == 5 else 4)) + x.lstrip(" ")) if x.strip() and _indent(x) >= 5 else x
        for x in lines
    )


def to_markdown(page: str, text: str) -> str:
    lines = shift_mdoc(text).splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        ind = _indent(line)
        nxt = next((x for x in lines[i + 1 :] if x.strip()), "")
        body = line.strip()
        if (
            ind > 7
            and _indent(nxt) >= ind + 4
            and len(body) < 50
            and debian_corpus.is_tag(body)
            and not body.startswith(("•", "-", "*"))
            and (i == 0 or not lines[i - 1].strip())
        ):
            line = " " * 7 + body  # a nested list's tag: written as a top-level one, so it becomes ###
        out.append(line)
    return debian_corpus.to_markdown(page, "\n".join(out))


def main() -> int:
    for page in sys.argv[1:]:
        (HERE / f"{page}.md").write_text(to_markdown(page, debian_corpus.render(page)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
