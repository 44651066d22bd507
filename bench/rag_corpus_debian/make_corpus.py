#!/usr/bin/env python3
"""Rebuild this corpus from the manual pages installed on a Debian machine (see README.md).

    .venv/bin/python bench/rag_corpus_debian/make_corpus.py PAGE...   # e.g. journald.conf e2fsck

Each page is rendered by man(1) as plain text and written as Markdown: its sections (`.SH`) become
`##` headings, subsections and the entries of option lists (`.TP`) become `###` headings, so a
question's gold answer can name the option or section that holds it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def render(page: str) -> str:
    env = dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0", LANG="C.UTF-8")
    raw = subprocess.run(["man", "-P", "cat", page], env=env, capture_output=True, check=True).stdout
    return subprocess.run(["col", "-bx"], input=raw, capture_output=True, check=True).stdout.decode("utf-8")


def is_tag(line: str) -> bool:
    """An option list's tag: short, or a list of `Name=` settings; not a sentence."""
    return (len(line) < 80 or line.endswith("=")) and not line.endswith(".")


def to_markdown(page: str, text: str) -> str:
    lines: list[str] = []
    for line in text.splitlines()[1:]:  # drop the running header
        if lines and lines[-1].startswith(" " * 7) and lines[-1].rstrip().endswith("=,") and line.startswith(" " * 7):
            lines[-1] = lines[-1].rstrip() + " " + line.strip()  # an option list's tag over two lines
        else:
            lines.append(line)
    out = [f"# {page}", ""]
    for i, line in enumerate(lines):
        if not line.strip():
            out.append("")
            continue
        indent = len(line) - len(line.lstrip(" "))
        nxt = next((x for x in lines[i + 1 :] if x.strip()), "")
        nxt_indent = len(nxt) - len(nxt.lstrip(" "))
        if indent == 0:
            if re.match(r"^\S.*\s{3,}\S.*\(\d\w*\)$", line):  # the running footer
                continue
            out += [f"## {line.strip().title()}", ""]
        elif indent == 3:
            out += [f"### {line.strip()}", ""]
        elif indent == 7 and (m := re.match(r"^(-{1,2}[\w-]+(?: [\w-]+)?)\s{2,}(\S.*)$", line.strip())):
            out += [f"### {m.group(1)}", "", m.group(2)]
        elif indent == 7 and nxt_indent >= 11 and is_tag(line.strip()):
            out += [f"### {line.strip()}", ""]
        else:
            body = line.strip()
            out.append("\\" + body if body.startswith("#") else body)
    md = re.sub(r"(\w)\u2010\n(\w)", r"\1\2", "\n".join(out))  # words hyphenated at line ends
    md = re.sub(r"(?<=\S) {2,}(?=\S)", " ", md)  # justification
    return re.sub(r"\n{3,}", "\n\n", md).strip() + "\n"


def main() -> int:
    for page in sys.argv[1:]:
        (HERE / f"{page}.md").write_text(to_markdown(page, render(page)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
