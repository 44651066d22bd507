"""`fleet/uploads.py` with a window of pieces in flight, against the real command table and artifact store
(an in-process orchestrator): answers out of order are matched to their pieces, a piece whose answer
did not come is sent again, and the first refusal ends the upload with its message."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator

import pytest

from edgefleet.fleet.uploads import UPLOAD_WINDOW, upload
from edgefleet.orchestrator.runtime import Orchestrator
from edgefleet.proto.commands import Command, UploadChunkRequest
from edgefleet.proto.payloads import MAX_UPLOAD_CHUNK_BYTES, CommandResult
from tests.mqtt_support import Mosquitto
from tests.orchestrator.command_client import lab_orchestrator

PIECES = 12


@pytest.fixture(scope="module")
def orch(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    with lab_orchestrator(broker, tmp_path_factory.mktemp("orch")) as o:
        yield o


def data_of(seed: int) -> bytes:
    """PIECES pieces, the last one short, different per seed."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MAX_UPLOAD_CHUNK_BYTES // 32)
    return (block * PIECES)[: PIECES * MAX_UPLOAD_CHUNK_BYTES - 100]


def index_of(cmd: Command) -> int:
    assert isinstance(cmd.request, UploadChunkRequest)
    return cmd.request.upload.index


def test_answers_out_of_order_are_matched_to_their_pieces(orch: Orchestrator) -> None:
    data = data_of(1)
    later = threading.Event()  # piece 1's answer waits until piece 5 is answered
    lock = threading.Lock()
    sent: list[int] = []
    answered: list[int] = []

    def send(cmd: Command) -> CommandResult:
        i = index_of(cmd)
        with lock:
            sent.append(i)
        if i == 1:
            assert later.wait(10), "piece 5 was never sent while piece 1 was in flight"
        with lock:  # the real orchestrator runs one command at a time
            result = orch.table.dispatch_command(cmd)
            answered.append(i)
        if i == 5:
            later.set()
        return result

    progress: list[tuple[int, int, bool]] = []
    sha, result = upload(send, data, lambda *p: progress.append(p))
    assert result.ok and result.data == {"missing": 0}, result
    assert sent[0] == 0 and sorted(sent) == list(range(PIECES))
    assert answered.index(5) < answered.index(1)  # out of order
    assert [p[0] for p in progress] == list(range(1, PIECES + 1))  # the bar counts answers, as before
    assert progress[-1] == (PIECES, PIECES, True) and not any(p[2] for p in progress[:-1])
    assert orch.store.blob_path(sha).read_bytes() == data


def test_a_piece_without_an_answer_is_sent_again(orch: Orchestrator) -> None:
    data = data_of(2)
    sent: list[int] = []

    def send(cmd: Command) -> CommandResult:
        sent.append(index_of(cmd))
        if index_of(cmd) == 3 and sent.count(3) == 1:
            raise TimeoutError("no answer within 30 s")
        return orch.table.dispatch_command(cmd)

    sha, result = upload(send, data, window=1)
    assert result.ok and sent.count(3) == 2 and orch.store.blob_path(sha).read_bytes() == data


def test_the_first_refusal_ends_the_upload_with_its_message(orch: Orchestrator) -> None:
    data = data_of(3)
    sent: list[int] = []
    lock = threading.Lock()

    def send(cmd: Command) -> CommandResult:
        i = index_of(cmd)
        with lock:
            sent.append(i)
            if i == 3:  # a piece cut short on its way: the store refuses it
                assert isinstance(cmd.request, UploadChunkRequest)
                short = base64.b64encode(base64.b64decode(cmd.request.upload.data)[:-10]).decode()
                piece = cmd.request.upload.model_copy(update={"data": short})
                cmd = Command(UploadChunkRequest(upload=piece))
            return orch.table.dispatch_command(cmd)

    progress: list[tuple[int, int, bool]] = []
    sha, result = upload(send, data, lambda *p: progress.append(p))
    assert not result.ok and result.field == "upload", result
    expected = MAX_UPLOAD_CHUNK_BYTES
    assert f"upload piece 3 is {expected - 10} bytes, expected {expected}" in result.message
    assert max(sent) <= 3 + UPLOAD_WINDOW and len(sent) < PIECES, sent  # nothing sent after the refusal came
    assert not orch.store.has_blob(sha) and not any(p[2] for p in progress)
    assert orch.store.missing_uploads(sha, len(data), MAX_UPLOAD_CHUNK_BYTES) == [3, *range(max(sent) + 1, PIECES)]
