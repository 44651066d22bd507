"""A node's groups at run time: its own (profile, EDGEFLEET_GROUPS) and those the orchestrator assigns.

The assignment arrives retained on `assign/node/<id>` and is kept in the node's database (one
row, one transaction), so a restart, with the broker away too, serves with the groups it last
applied. It is checked like desired state: a node that pins the site's key takes only
assignments the site signed (UNSIGNED, BAD_SIGNATURE), for this site and this node
(WRONG_SITE, WRONG_TARGET), and never goes back (REPLAYED: an older generation, or another
assignment at the generation applied). Everything here is data in, data out; the control agent
does the subscribing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from edgefleet.node.control.faults import parse_bounded
from edgefleet.node.errors import disk_full_as
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import GroupAssignment, PayloadError, effective_groups
from edgefleet.proto.signing import KeyRing, SignatureError

Reject = Callable[[str, str, str], None]  # (topic, code, message)


def same_assignment(a: GroupAssignment, b: GroupAssignment) -> bool:
    """The same assignment, whether or not (or by which key) either copy is signed."""
    unsigned = {"key_id", "signature"}
    return a.model_dump(mode="json", exclude=unsigned) == b.model_dump(mode="json", exclude=unsigned)


class AssignmentStore:
    """The applied assignment, in the node's database (the `group_assignment` table)."""

    def __init__(self, db: sqlite_utils.Database, node_id: str) -> None:
        self.db, self.node_id = db, node_id
        self.path = Path(db.conn.execute("PRAGMA database_list").fetchone()[2] or ".")

    def load(self) -> GroupAssignment | None:
        row = self.db.execute("SELECT doc FROM group_assignment WHERE node_id = ?", [self.node_id]).fetchone()
        return GroupAssignment.model_validate_json(row[0]) if row else None

    def save(self, doc: GroupAssignment) -> None:
        with disk_full_as("group-assignment store", self.path), self.db.conn:
            self.db.execute(
                "INSERT INTO group_assignment (node_id, generation, doc, applied_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET generation=excluded.generation, doc=excluded.doc, "
                "applied_at=excluded.applied_at",
                [doc.node_id, doc.generation, doc.model_dump_json(), time.time()],
            )


class GroupMembership:
    def __init__(
        self, site: str, node_id: str, own: list[str], store: AssignmentStore, keys: KeyRing, reject: Reject
    ) -> None:
        self.site, self.node_id, self.own = site, node_id, list(own)
        self.store, self.keys, self.reject = store, keys, reject
        self.applied = store.load()

    @property
    def assigned(self) -> list[str]:
        return list(self.applied.groups) if self.applied else []

    @property
    def generation(self) -> int:
        return self.applied.generation if self.applied else 0

    @property
    def effective(self) -> list[str]:
        return effective_groups(self.own, self.assigned)

    def accept(self, topic: str, payload: bytes | bytearray) -> bool:
        """Take an assignment message; True when it changed the applied one (saved), False when it
        was refused (through `reject`, with the reason) or changes nothing."""
        if not payload:  # a cleared retained message: keep what was applied
            return False
        try:
            doc = parse_bounded(GroupAssignment, payload)
        except PayloadError as e:
            self.reject(topic, ErrorCode.INVALID_PAYLOAD, f"group assignment on {topic} refused: {e}")
            return False
        if self.keys:
            try:
                self.keys.verify(doc)
            except SignatureError as e:
                self.reject(topic, e.code, f"group assignment on {topic} refused: {e}")
                return False
        if doc.site != self.site:
            self.reject(topic, ErrorCode.WRONG_SITE, f"group assignment for site {doc.site!r} refused on {self.site!r}")
            return False
        if doc.node_id != self.node_id:
            self.reject(topic, ErrorCode.WRONG_TARGET, f"group assignment of {doc.node_id} refused by {self.node_id}")
            return False
        held = self.applied
        if held is not None and doc.generation <= held.generation:
            if doc.generation == held.generation and same_assignment(held, doc):
                return False  # sent again on a reconnect
            if self.keys:
                self.reject(
                    topic,
                    ErrorCode.REPLAYED,
                    f"group assignment generation {doc.generation} refused: generation {held.generation} is "
                    f"applied (a replayed or reused generation)",
                )
            return False
        self.store.save(doc)
        self.applied = doc
        return True
