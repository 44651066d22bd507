"""No decision in the source depends on an error message's wording: errors cross processes with an
ErrorCode (proto/error_table.py), and failover, cooldowns, exit codes and the console read that.

The patterns are the shapes such a decision took (a word looked up in a gRPC error's details, in an
exception's text, in a message); a new one fails here with its file and line."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("node", "orchestrator", "fleet", "plumbing", "proto")
PATTERNS = {
    "a word in a gRPC error's details": re.compile(r"""\bin\s+\(?\s*(\w+\.)*(e|err|error|exc|failure)\.details\b"""),
    "a gRPC error's details compared": re.compile(r"""\.details\(\)\s*(or\s*""\s*\)?\s*)?(\.lower\(\)\s*)?[=!]="""),
    "a gRPC error's details searched": re.compile(
        r"""\.details\(\)\s*(or\s*""\s*\)?)?(\)\.lower\(\))?\s*\)?\s*\.(startswith|endswith|find)\("""
    ),
    "'draining' looked up in text": re.compile(r"""["']draining["']\s+in\b"""),
    "a word in an exception's text": re.compile(r"""\bin\s+str\(\s*(e|err|exc|error)\s*\)"""),
    "a word in a message": re.compile(r"""["'][^"']*["']\s+in\s+(\w+\.)*\w*(msg|message|details|reason)\b(?!\s*\()"""),
    "a message's start or end looked at": re.compile(
        r"""\b(\w+\.)*\w*(msg|message|details|reason)(\(\))?(\.lower\(\))?\.(startswith|endswith|find|index)\("""
    ),
    "an exception's text searched": re.compile(
        r"""\bstr\(\s*(e|err|exc|error)\s*\)(\.lower\(\))?\.(startswith|endswith|find|index)\("""
    ),
}
# Text of a third-party library that gives no code for the condition, inside one process: SQLite's
# messages where the driver (pysqlite3) may carry no `sqlite_errorcode`, sqlite-vec's own write error.
ALLOWED = {
    ("node/errors.py", '"disk is full" in str(error)'),
    ("node/knowledge/sqlite.py", "for m in _CORRUPTION_MARKERS"),
    ("node/knowledge/sqlite.py", '"sqlite-vec" in str(error)'),
}


def _decisions() -> list[str]:
    found = []
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/v1/" in rel:  # generated stubs
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                for what, pattern in PATTERNS.items():
                    if pattern.search(code) and not any(rel == f and text in code for f, text in ALLOWED):
                        found.append(f"{rel}:{number}: {what}: {line.strip()}")
    return found


def test_no_decision_reads_an_error_message() -> None:
    assert _decisions() == []


def test_the_patterns_catch_the_shapes_they_name() -> None:
    shapes = [
        'if "draining" in failure.details:',
        'if code == grpc.StatusCode.UNAVAILABLE and "connect" in (e.details() or "").lower():',
        'if e.details() == "node is draining":',
        'if "revoked" in str(e):',
        'if "older" in result.message:',
        'if e.details().startswith("node"):',
        # the console's guess at a refusal's form field (fleet/console/writes.py before `CommandResult.field`)
        'if result.code in ("not_found", "wrong_target") or msg.startswith("target"):',
        'if result.code == "older_version" or "version" in msg.split(":", 1)[0]:',
        'if msg.startswith("template name")',
        'if "older" in error_message:',
        'if str(e).lower().startswith("template refused"):',
    ]
    for shape in shapes:
        assert any(p.search(shape) for p in PATTERNS.values()), shape
    fine = [
        'log.info("x", extra={"reason": e.details()})',
        'raise FrontDoorError(code, f"{e.details()}")',
        "if text.endswith(s[:n]):",  # a stop string in generated text, not an error's words
        'field = result.field.split(".")',
    ]
    for line in fine:
        assert not any(p.search(line) for p in PATTERNS.values()), line
