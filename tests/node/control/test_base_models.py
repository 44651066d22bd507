"""The base-model slots in node.db (node/control/base_models.py), on a real node database: a pending
model is tried once per start and dropped as refused when a start never finished it; a commit keeps
one model back on disk and removes the file of the one before; refusals survive a reopen."""

from __future__ import annotations

from pathlib import Path

from edgefleet.node.control.base_models import OWN, BaseModels, ModelSlot
from edgefleet.node.control.desired_store import open_node_db


def slot(tmp_path: Path, name: str, sha: str) -> ModelSlot:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(b"GGUF" + sha.encode())
    return ModelSlot(name, "1.0", sha * 64, path, path.stat().st_size)


def test_a_pending_model_is_tried_once_then_dropped(tmp_path: Path) -> None:
    models = BaseModels(open_node_db(tmp_path / "node.db"))
    a = slot(tmp_path, "a", "a")
    models.set_pending(a)
    tried, abandoned = models.begin_attempt()
    assert tried is not None and tried.attempts == 1 and abandoned is None
    # the process died while loading it: the next start gets nothing to try, and the one abandoned
    models = BaseModels(open_node_db(tmp_path / "node.db"))
    tried, abandoned = models.begin_attempt()
    assert tried is None and abandoned is not None and abandoned.label == "a@1.0"
    assert models.pending() is None


def test_commit_keeps_one_model_back_and_removes_the_one_before(tmp_path: Path) -> None:
    models = BaseModels(open_node_db(tmp_path / "node.db"))
    a, b, c = (slot(tmp_path, n, n) for n in "abc")
    for m in (a, b):
        models.set_pending(m)
        models.commit(m)
    assert models.committed() == b and models.previous() == a
    models.set_pending(c)
    models.commit(c)
    assert models.committed() == c and models.previous() == b
    assert b.path is not None and b.path.exists()  # one back: a rollback needs no download
    assert a.path is not None and not a.path.exists()
    models.set_pending(ModelSlot())  # back to the node's own model
    models.commit(ModelSlot())
    assert models.committed() is None and models.previous() == c
    assert c.path is not None and c.path.exists() and not b.path.exists()
    models.drop_pending(c)  # a failed return to c: its file stays, it is the previous model
    assert c.path.exists()


def test_refusals_survive_a_reopen_and_go_when_another_model_is_desired(tmp_path: Path) -> None:
    models = BaseModels(open_node_db(tmp_path / "node.db"))
    a = slot(tmp_path, "a", "a")
    models.refuse(a, "its check failed: no token")
    models.refuse(ModelSlot(), "it no longer loads")
    models = BaseModels(open_node_db(tmp_path / "node.db"))
    assert models.refusals() == {
        a.sha256: ("a@1.0", "its check failed: no token"),
        OWN: ("own model", "it no longer loads"),
    }
    assert set(models.unannounced()) == {a.sha256, OWN}
    models.announced(a.sha256)
    assert set(models.unannounced()) == {OWN}
    models.forgive(a.sha256)
    assert set(models.refusals()) == {a.sha256}
