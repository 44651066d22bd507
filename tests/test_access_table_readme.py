"""The README's table of who may do what is proto/access.py's table, rendered (so they cannot drift)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.proto.access import (
    COMMAND_ROLE,
    FRONT_DOOR_GRANTS,
    NODE_GRANTS,
    Kind,
    Permission,
    Principal,
    Role,
    allowed,
)

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- access-table -->", "<!-- /access-table -->"

IDENTITIES = [
    ("orchestrator", Principal("o", Kind.ORCHESTRATOR)),
    ("node", Principal("n", Kind.NODE)),
    ("sensor", Principal("s", Kind.SENSOR)),
    ("operator, viewer", Principal("v", Kind.OPERATOR, Role.VIEWER)),
    ("operator, operator", Principal("p", Kind.OPERATOR, Role.OPERATOR)),
    ("operator, admin", Principal("a", Kind.OPERATOR, Role.ADMIN)),
    ("API key", Principal("k", Kind.API_KEY)),
]
PERMS = [Permission.GENERATE, Permission.NODE_INFO, Permission.KNOWLEDGE_READ, Permission.KNOWLEDGE_WRITE]


def _cell(on: bool) -> str:
    return "yes" if on else "—"


def render() -> str:
    head = [
        "identity",
        *(f"node: {p.value}" for p in PERMS),
        *(f"front door: {p.value}" for p in (*PERMS[:3], Permission.METRICS)),
        "commands",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, who in IDENTITIES:
        cmds = "—"
        if who.kind is Kind.OPERATOR:
            ops = sorted(op for op, role in COMMAND_ROLE.items() if who.has_role(role))
            cmds = "all" if len(ops) == len(COMMAND_ROLE) else ("reads" if who.role is Role.VIEWER else "all but keys")
            assert ops
        row = [label]
        row += [_cell(allowed(NODE_GRANTS, who, p)) for p in PERMS]
        row += [_cell(allowed(FRONT_DOOR_GRANTS, who, p)) for p in (*PERMS[:3], Permission.METRICS)]
        row.append(cmds)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def test_readme_access_table_is_the_grants_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, f"README needs the table between {START} and {END}"
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == render(), "README's access table differs from proto/access.py; paste:\n" + render()
