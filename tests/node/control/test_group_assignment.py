"""A node's group membership, without MQTT: what it takes, what it refuses and why, what it keeps."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.node.control.desired_store import open_node_db
from edgefleet.node.control.group_assignment import AssignmentStore, GroupMembership
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.payloads import DesiredState, GroupAssignment, effective_groups
from edgefleet.proto.signing import KeyRing, SignatureError, sign_assignment, sign_desired

KEY = Ed25519PrivateKey.generate()
TOPIC = "edgefleet/lab/assign/node/n1"


def assignment(generation: int, *groups: str, node: str = "n1", site: str = "lab") -> bytes:
    doc = GroupAssignment(site=site, node_id=node, groups=list(groups), generation=generation, ts=1.0)
    return sign_assignment(doc, KEY).dumps()


def membership(tmp: Path, keys: KeyRing) -> tuple[GroupMembership, list[tuple[str, str]]]:
    refused: list[tuple[str, str]] = []
    store = AssignmentStore(open_node_db(tmp / "node.db"), "n1")
    m = GroupMembership("lab", "n1", ["x86-dev", "ga"], store, keys, lambda t, c, msg: refused.append((c, msg)))
    return m, refused


def test_assigned_groups_follow_the_node_own_and_survive_a_restart(tmp_path: Path) -> None:
    m, refused = membership(tmp_path, KeyRing([KEY.public_key()]))
    assert m.effective == ["x86-dev", "ga"] and m.generation == 0
    assert m.accept(TOPIC, assignment(1, "gb", "ga"))
    assert m.effective == ["x86-dev", "ga", "gb"] and m.assigned == ["gb", "ga"]
    assert not m.accept(TOPIC, assignment(1, "gb", "ga")), "the same one again (a reconnect) changes nothing"
    assert not m.accept(TOPIC, b""), "a cleared retained message keeps what was applied"
    again, _ = membership(tmp_path, KeyRing([KEY.public_key()]))
    assert again.effective == ["x86-dev", "ga", "gb"] and again.generation == 1
    assert again.accept(TOPIC, assignment(2))
    assert again.effective == ["x86-dev", "ga"] and refused == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (GroupAssignment(site="lab", node_id="n1", groups=["gx"], generation=9).dumps(), ErrorCode.UNSIGNED),
        (
            sign_assignment(
                GroupAssignment(site="lab", node_id="n1", generation=9), Ed25519PrivateKey.generate()
            ).dumps(),
            ErrorCode.BAD_SIGNATURE,
        ),
        (assignment(9, "gx").replace(b'"gx"', b'"gy"'), ErrorCode.BAD_SIGNATURE),
        (assignment(9, node="n2"), ErrorCode.WRONG_TARGET),
        (assignment(9, site="other"), ErrorCode.WRONG_SITE),
        (b'{"v": 1, "site": "lab", "node_id": "n1", "groups": ["../x"], "generation": 9}', ErrorCode.INVALID_PAYLOAD),
        (b"{nope", ErrorCode.INVALID_PAYLOAD),
    ],
)
def test_a_node_that_pins_the_site_key_refuses_what_the_site_did_not_sign(
    tmp_path: Path, payload: bytes, code: str
) -> None:
    m, refused = membership(tmp_path, KeyRing([KEY.public_key()]))
    assert not m.accept(TOPIC, payload)
    assert [c for c, _ in refused] == [code] and m.effective == ["x86-dev", "ga"]


def test_an_older_or_reused_generation_is_a_replay(tmp_path: Path) -> None:
    m, refused = membership(tmp_path, KeyRing([KEY.public_key()]))
    assert m.accept(TOPIC, assignment(3, "gb"))
    assert not m.accept(TOPIC, assignment(2, "gc"))
    assert not m.accept(TOPIC, assignment(3, "gc"))
    assert [c for c, _ in refused] == [ErrorCode.REPLAYED, ErrorCode.REPLAYED] and m.assigned == ["gb"]


def test_without_a_pinned_key_an_older_generation_is_ignored_quietly(tmp_path: Path) -> None:
    m, refused = membership(tmp_path, KeyRing())
    assert m.accept(TOPIC, GroupAssignment(site="lab", node_id="n1", groups=["gb"], generation=2).dumps())
    assert not m.accept(TOPIC, assignment(1, "gc")) and refused == [] and m.assigned == ["gb"]


def test_an_assignment_signature_is_never_a_desired_state_signature() -> None:
    a = sign_assignment(GroupAssignment(site="lab", node_id="n1", generation=1), KEY)
    doc = DesiredState(site="lab", target={"kind": "node", "name": "n1"}, generation=1)
    forged = doc.model_copy(update={"key_id": a.key_id, "signature": a.signature})
    with pytest.raises(SignatureError):
        KeyRing([KEY.public_key()]).verify(forged)
    desired = sign_desired(doc, KEY)
    assert base64.b64decode(desired.signature) != base64.b64decode(a.signature)


def test_effective_groups_keep_the_node_own_first_without_duplicates() -> None:
    assert effective_groups(["p", "a"], ["b", "a", "c"]) == ["p", "a", "b", "c"]
    with pytest.raises(ValueError, match="twice"):
        GroupAssignment(site="lab", node_id="n1", groups=["a", "a"], generation=1)
