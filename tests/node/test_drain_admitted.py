"""A request the node admitted before it began to drain is answered whole (a model switch or SIGTERM).

The drain used to wait only for the engine's requests: one admitted (past the draining check) but
still being prepared (template, tokens, grammar) was not counted, so the node stopped its server
under it and the client got CANCELLED mid-stream; on a loaded machine this hit a client streaming
through a model switch. The fail point `service.prepare` holds a request in that window.
"""

from __future__ import annotations

import signal
import threading

import grpc

from edgefleet.proto.v1 import inference_pb2 as pb
from tests.conftest import collect, wait_for


def test_a_request_admitted_before_the_drain_is_answered_whole(start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(env={"EDGEFLEET_FAILPOINTS": "service.prepare=sleep:2500"})
    result: dict[str, str] = {}

    def ask() -> None:
        try:
            req = pb.GenerateRequest(prompt="Hello", max_tokens=4, temperature=0)
            result["text"] = collect(node.stub.Generate(req, timeout=60))[0]
        except grpc.RpcError as e:
            result["error"] = f"{e.code()}: {e.details()}"

    client = threading.Thread(target=ask)
    client.start()
    assert wait_for(lambda: "failpoint=service.prepare" in node.log(), timeout=30), node.log()[-2000:]
    node.proc.send_signal(signal.SIGTERM)  # the same drain as a model switch
    client.join(60)
    assert "error" not in result, result["error"]
    assert result.get("text"), result
    assert node.proc.wait(timeout=30) == 0
