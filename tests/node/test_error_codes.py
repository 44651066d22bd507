"""A node's gRPC errors carry their ErrorCode in the trailing metadata, and the CLI decides on it:
a draining node says DRAINING (not just UNAVAILABLE), and `edgefleet ask` exits "try again later"."""

from __future__ import annotations

import signal
import subprocess

import grpc
import pytest

from edgefleet.fleet.exit_codes import EXIT_TRY_LATER
from edgefleet.plumbing.grpc_errors import sent_code
from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import BIN, wait_for
from tests.fleet.site_support import operator_env


def test_knowledge_rpcs_send_their_code(stub: pb_grpc.InferenceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Retrieve(pb.RetrieveRequest(query="pump", collection="no-such-collection"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert sent_code(err.value) == ErrorCode.NOT_FOUND


def test_a_draining_node_sends_draining_and_the_cli_exits_try_later(start_node) -> None:  # type: ignore[no-untyped-def]
    # each engine step slowed, so the 200-token answer keeps the node draining while the test asks
    node = start_node(env={"EDGEFLEET_FAILPOINTS": "engine.step=sleep:60"})
    long = node.stub.Generate(pb.GenerateRequest(prompt="Count: 1, 2, 3, 4, 5, 6, 7,", max_tokens=200, temperature=0))
    assert next(long).text is not None
    node.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: node.info().status == "draining", timeout=5)

    with pytest.raises(grpc.RpcError) as err:
        list(node.stub.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and sent_code(err.value) == ErrorCode.DRAINING
    with pytest.raises(grpc.RpcError) as err:
        node.stub.Embed(pb.EmbedRequest(texts=["pump"]), timeout=10)
    assert sent_code(err.value) == ErrorCode.DRAINING

    r = subprocess.run(
        [str(BIN / "edgefleet"), "--node", node.address, "ask", "hi", "--max-tokens", "2"],
        capture_output=True, text=True, timeout=60, env=operator_env(),
    )  # fmt: skip
    assert node.info().status == "draining", "the answer in flight keeps the node draining while the CLI asks"
    assert r.returncode == EXIT_TRY_LATER and "draining" in r.stderr, r.stderr
    rest = list(long)
    assert rest[-1].usage.completion_tokens == 200
