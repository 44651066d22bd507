"""A unary call (Retrieve, Embed) whose caller goes away mid-call gives its slot back.

A node whose searches are slow (fail point `knowledge.retrieve=sleep:…`) joins the package's site;
callers of Retrieve through the front door give up (their deadline passes) while the node is still
searching. The front door allows 2 calls per node at once (EDGEFLEET_ROUTE_MAX_SLOTS_PER_NODE), so
if the cancelled calls kept their slots a patient caller after them would never be served.
"""

from __future__ import annotations

import grpc
import pytest

from edgefleet.proto.v1 import inference_pb2 as pb
from edgefleet.proto.v1 import inference_pb2_grpc as pb_grpc
from tests import site_identity
from tests.conftest import wait_for
from tests.orchestrator.front_door.conftest import Site

NODE, COLLECTION, SEARCH_MS = "fd-slow", "slow-docs", 1500


def test_callers_that_give_up_mid_call_leave_their_slots_free(site: Site) -> None:
    node = site.start_node(NODE, EDGEFLEET_FAILPOINTS=f"knowledge.retrieve=sleep:{SEARCH_MS}")
    try:
        channel = site_identity.site().grpc_channel(node.address, node_id=NODE)
        doc = pb.Document(id="valve", text="Valve 9 is opened with the red lever.")
        pb_grpc.InferenceStub(channel).Ingest(pb.IngestRequest(collection=COLLECTION, documents=[doc]), timeout=60)
        channel.close()
        req = pb.RetrieveRequest(query="valve", collection=COLLECTION)
        assert wait_for(lambda: _retrieves(site, req, 30.0), timeout=30), site.orchestrator_log()[-3000:]
        acting = node.log().count("failpoint=knowledge.retrieve")
        for _ in range(2):  # as many as the node's slots at the front door
            with pytest.raises(grpc.RpcError) as e:
                site.stub.Retrieve(req, timeout=SEARCH_MS / 1000 / 3)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # both reached the node (the fail point announces itself) before their callers gave up
        assert wait_for(lambda: node.log().count("failpoint=knowledge.retrieve") >= acting + 2, timeout=10)
        response = site.stub.Retrieve(req, timeout=30)  # a patient caller after them is served
        assert [c.doc_id for c in response.chunks] == ["valve"]
    finally:
        node.stop()
        site.nodes.pop(NODE, None)


def _retrieves(site: Site, req: pb.RetrieveRequest, timeout: float) -> bool:
    """True once the front door routes the collection to the slow node (its probe saw it)."""
    try:
        return bool(site.stub.Retrieve(req, timeout=timeout).chunks)
    except grpc.RpcError:
        return False
