#!/usr/bin/env python3
"""Rebuild this corpus from the manual pages installed on a Debian machine (see README.md).

    .venv/bin/python bench/rag_corpus_heldout/make_corpus.py PAGE...   # e.g. login.defs mke2fs
    .venv/bin/python bench/rag_corpus_heldout/make_corpus.py --out bench/rag_corpus_heldout2 PAGE...

Rendered exactly as `bench/rag_corpus_manuals/make_corpus.py` renders its pages (it is loaded from there).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("manuals_corpus", HERE.parent / "rag_corpus_manuals" / "make_corpus.py")
assert _spec is not None and _spec.loader is not None
manuals_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(manuals_corpus)


def main() -> int:
    args = sys.argv[1:]
    out = HERE
    if args[:1] == ["--out"] and len(args) >= 2:
        out, args = Path(args[1]), args[2:]
    for page in args:
        text = manuals_corpus.to_markdown(page, manuals_corpus.debian_corpus.render(page))
        (out / f"{page}.md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
